/* wasim.c - write-amplification simulator for a log-structured block store cleaner.
 * Build: gcc -O2 -o wasim wasim.c -lm
 * Units: 4 KiB blocks. See usage() for flags. Single-threaded, no deps.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>
#include <time.h>

#define MAXST 8
#define INF_T ((int64_t)1 << 62)

/* ---------------- parameters ---------------- */
static int S = 256, B = 1024, R = 4;
static double FILL = 0.8, HOTFRAC = 0.2, HOTPROB = 0.8;
static double WARM = 10.0, MEAS = 10.0;
static uint64_t SEED = 1;
static int UNIFORM = 0;
/* policy knobs */
enum { PL_SINGLE, PL_ORACLE, PL_SEPBIT, PL_PREVAGE };
enum { V_GREEDY, V_CBMAX, V_CBMEAN, V_CBSEG };
static int PLACE = PL_SINGLE, VICTIM = V_GREEDY, BATCH = 0, SORTREL = 0;
static int THR_MED = 0, RELSPLIT = 0;
static double RAGEMUL = 1.0;
static int PARTITION = 0, QUOTA_HOT = 0; /* oracle fixed partition mode */

/* ---------------- state ---------------- */
typedef struct {
  int32_t *blk;   /* logical block per slot, -1 = invalid */
  int32_t fill, live;
  int8_t state;   /* 0 free, 1 open, 2 sealed */
  int8_t cls;     /* stream it was opened for */
  int64_t tmax;   /* newest user-write time of any block appended */
  int64_t tsum;   /* sum of user-write times of live blocks */
  int64_t tcreate;
} Seg;

static Seg *seg;
static int *freelist, nfree;
static int open_[MAXST];
static int owned[MAXST], quota[MAXST];
static int32_t L, H;          /* logical blocks, hot blocks */
static int32_t *loc;          /* seg*B+slot */
static int64_t *lastw;        /* last user-write time */
static uint8_t *hot;
static int32_t *perm;
static int64_t now = 0;       /* user-write clock */
static int in_clean = 0;
static uint64_t n_user = 0, n_reloc = 0, n_victims = 0;
static double sum_vu = 0;

/* SepBIT */
static double ell = 1e300, ELLFIX = 0;
static int64_t life_ring[16]; static int life_n = 0, life_pos = 0;
/* prev-age threshold window */
#define WIN 16384
static int64_t win[WIN], wtmp[WIN]; static int win_n = 0, win_pos = 0;
static double win_sum = 0, thr = 1e300;

/* ---------------- rng ---------------- */
static uint64_t rs;
static inline uint64_t rnd(void) {
  uint64_t z = (rs += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static inline uint32_t rndn(uint32_t n) { return (uint32_t)(((unsigned __int128)rnd() * n) >> 64); }
static inline double rndu(void) { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }

/* ---------------- placement ---------------- */
static int user_class(int32_t b, int64_t life) {
  switch (PLACE) {
  case PL_SINGLE: return 0;
  case PL_ORACLE: return hot[b] ? 0 : 1;
  case PL_SEPBIT: return (life < INF_T && (double)life < ell) ? 0 : 1; /* class1=0, class2=1 */
  case PL_PREVAGE: return (life < INF_T && (double)life < thr) ? 0 : 1;
  }
  return 0;
}
static int reloc_class(int32_t b, int vcls) {
  switch (PLACE) {
  case PL_SINGLE: return 1;
  case PL_ORACLE: return hot[b] ? 0 : 1;
  case PL_SEPBIT: {
    if (vcls == 0) return 2;                       /* class 3 */
    double age = (double)(now - lastw[b]);
    if (age < 4 * ell) return 3;                   /* class 4 */
    if (age < 16 * ell) return 4;                  /* class 5 */
    return 5;                                      /* class 6 */
  }
  case PL_PREVAGE:
    if (!RELSPLIT) return 2;
    return ((double)(now - lastw[b]) < RAGEMUL * thr) ? 2 : 3;
  }
  return 1;
}

/* ---------------- segment ops ---------------- */
static void seg_alloc(int st) {
  if (nfree == 0) { fprintf(stderr, "FATAL: out of free segments (raise -R)\n"); exit(2); }
  if (PARTITION && owned[st] >= quota[st]) { fprintf(stderr, "FATAL: quota exceeded\n"); exit(2); }
  int s = freelist[--nfree];
  Seg *g = &seg[s];
  g->state = 1; g->cls = (int8_t)st; g->fill = 0; g->live = 0;
  g->tmax = 0; g->tsum = 0; g->tcreate = now;
  open_[st] = s; owned[st]++;
}
static void seg_free(int s) {
  Seg *g = &seg[s];
  owned[g->cls]--;
  g->state = 0; g->fill = 0; g->live = 0;
  freelist[nfree++] = s;
}
static inline void invalidate(int32_t b) {
  int32_t p = loc[b];
  if (p < 0) return;
  Seg *g = &seg[p / B];
  g->blk[p % B] = -1; g->live--; g->tsum -= lastw[b];
  loc[b] = -1;
}

static void clean(int cls_only);

static void append(int32_t b, int st) {
  int s;
  for (;;) {
    s = open_[st];
    if (s >= 0 && seg[s].fill < B) break;
    if (s >= 0) { seg[s].state = 2; open_[st] = -1; }
    if (PARTITION) {
      if (!in_clean) { in_clean = 1; while (owned[st] >= quota[st]) clean(st); in_clean = 0; }
      if (open_[st] < 0) seg_alloc(st);
    } else {
      seg_alloc(st);
      if (!in_clean) { in_clean = 1; while (nfree < R) clean(-1); in_clean = 0; }
    }
  }
  Seg *g = &seg[s];
  g->blk[g->fill] = b; loc[b] = s * B + g->fill; g->fill++; g->live++;
  if (lastw[b] > g->tmax) g->tmax = lastw[b];
  g->tsum += lastw[b];
}

/* ---------------- cleaner ---------------- */
static double score(int s) {
  Seg *g = &seg[s];
  if (VICTIM == V_GREEDY) return -(double)g->live;
  if (g->live == 0) return 1e300;
  double u = (double)g->live / B, age;
  if (VICTIM == V_CBMAX) age = (double)(now - g->tmax);
  else if (VICTIM == V_CBSEG) age = (double)(now - g->tcreate);
  else age = (double)now - (double)g->tsum / g->live;
  return (1 - u) * age / (1 + u);
}

typedef struct { int32_t b; int8_t vcls; int64_t t; } Rel;
static Rel *relbuf;
static int relcmp(const void *a, const void *b) {
  int64_t x = ((const Rel *)a)->t, y = ((const Rel *)b)->t;
  return (x > y) - (x < y);
}

static void clean(int cls_only) {
  int vic[64], nv = 0;
  double vs[64];
  int k = BATCH;
  for (int s = 0; s < S; s++) {
    if (seg[s].state != 2) continue;
    if (cls_only >= 0 && seg[s].cls != cls_only) continue;
    double sc = score(s);
    if (nv < k) { int i = nv++; while (i > 0 && vs[i - 1] < sc) { vs[i] = vs[i - 1]; vic[i] = vic[i - 1]; i--; } vs[i] = sc; vic[i] = s; }
    else if (sc > vs[k - 1]) { int i = k - 1; while (i > 0 && vs[i - 1] < sc) { vs[i] = vs[i - 1]; vic[i] = vic[i - 1]; i--; } vs[i] = sc; vic[i] = s; }
  }
  if (nv == 0) { fprintf(stderr, "FATAL: no victim\n"); exit(2); }
  if (seg[vic[nv - 1]].live == B && VICTIM == V_GREEDY) { fprintf(stderr, "FATAL: victim has no garbage\n"); exit(2); }
  int nr = 0;
  for (int i = 0; i < nv; i++) {
    Seg *g = &seg[vic[i]];
    sum_vu += (double)g->live / B; n_victims++;
    for (int j = 0; j < g->fill; j++) {
      int32_t b = g->blk[j];
      if (b < 0) continue;
      relbuf[nr].b = b; relbuf[nr].vcls = g->cls; relbuf[nr].t = lastw[b]; nr++;
      loc[b] = -1;
    }
    if (PLACE == PL_SEPBIT && g->cls == 0) {
      life_ring[life_pos] = now - g->tcreate; life_pos = (life_pos + 1) % 16;
      if (life_n < 16) life_n++;
      double sum = 0; for (int q = 0; q < life_n; q++) sum += life_ring[q];
      ell = ELLFIX > 0 ? ELLFIX * L : sum / life_n;
    }
    seg_free(vic[i]);
  }
  if (SORTREL) qsort(relbuf, nr, sizeof(Rel), relcmp);
  for (int i = 0; i < nr; i++) {
    int st = PARTITION ? cls_only : reloc_class(relbuf[i].b, relbuf[i].vcls);
    append(relbuf[i].b, st);
  }
  n_reloc += nr;
}

/* ---------------- prev-age threshold ---------------- */
static int64_t qselect(int64_t *a, int n, int k) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    int64_t piv = a[(lo + hi) / 2]; int i = lo, j = hi;
    while (i <= j) { while (a[i] < piv) i++; while (a[j] > piv) j--; if (i <= j) { int64_t t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; } }
    if (k <= j) hi = j; else if (k >= i) lo = i; else return a[k];
  }
  return a[k];
}
static void win_add(int64_t life) {
  if (win_n == WIN) win_sum -= win[win_pos]; else win_n++;
  win[win_pos] = life; win_sum += life; win_pos = (win_pos + 1) % WIN;
  if (!THR_MED) thr = win_sum / win_n;
  else if ((now & 4095) == 0 || win_n < 64) { memcpy(wtmp, win, sizeof(int64_t) * win_n); thr = (double)qselect(wtmp, win_n, win_n / 2); }
}

/* ---------------- driver ---------------- */
static void user_write(int32_t b) {
  int64_t life = (lastw[b] < 0) ? INF_T : now - lastw[b];
  if (PLACE == PL_PREVAGE && life < INF_T) win_add(life);
  int c = user_class(b, life);
  invalidate(b);
  lastw[b] = now;
  append(b, c);
  now++; n_user++;
}

static int32_t pick_block(void) {
  if (UNIFORM) return (int32_t)rndn(L);
  if (rndu() < HOTPROB) return perm[rndn(H)];
  return perm[H + rndn(L - H)];
}

static double run(void) {
  rs = SEED * 0x2545F4914F6CDD1Dull + 12345;
  seg = calloc(S, sizeof(Seg));
  for (int s = 0; s < S; s++) seg[s].blk = malloc(sizeof(int32_t) * B);
  freelist = malloc(sizeof(int) * S);
  nfree = 0; for (int s = S - 1; s >= 0; s--) freelist[nfree++] = s;
  for (int i = 0; i < MAXST; i++) { open_[i] = -1; owned[i] = 0; }
  L = (int32_t)(FILL * S * B); H = UNIFORM ? 0 : (int32_t)(HOTFRAC * L);
  loc = malloc(sizeof(int32_t) * L); lastw = malloc(sizeof(int64_t) * L);
  hot = calloc(L, 1); perm = malloc(sizeof(int32_t) * L);
  relbuf = malloc(sizeof(Rel) * (size_t)B * (BATCH + 1));
  for (int32_t i = 0; i < L; i++) { perm[i] = i; loc[i] = -1; lastw[i] = -1; }
  for (int32_t i = L - 1; i > 0; i--) { int32_t j = rndn(i + 1), t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
  for (int32_t i = 0; i < H; i++) hot[perm[i]] = 1;   /* hot set = random 20% subset */
  if (PARTITION) {
    quota[0] = QUOTA_HOT; quota[1] = S - R - QUOTA_HOT;
    if (quota[0] < (H + B - 1) / B + 2 || quota[1] < (L - H + B - 1) / B + 2) {
      fprintf(stderr, "FATAL: quota_hot must be in [%d, %d]\n", (H + B - 1) / B + 2, S - R - (L - H + B - 1) / B - 2); exit(2); }
  }
  for (int32_t b = 0; b < L; b++) user_write(b);       /* sequential prefill */
  int64_t w = (int64_t)(WARM * L), m = (int64_t)(MEAS * L);
  for (int64_t i = 0; i < w; i++) user_write(pick_block());
  n_user = 0; n_reloc = 0; n_victims = 0; sum_vu = 0;
  for (int64_t i = 0; i < m; i++) user_write(pick_block());
  /* consistency check */
  int64_t tot = 0;
  for (int s2 = 0; s2 < S; s2++) {
    int lv = 0;
    if (seg[s2].state == 0) continue;
    for (int j = 0; j < seg[s2].fill; j++) { int32_t b = seg[s2].blk[j]; if (b >= 0) { lv++; if (loc[b] != s2 * B + j) { fprintf(stderr, "FATAL: map mismatch\n"); exit(3); } } }
    if (lv != seg[s2].live) { fprintf(stderr, "FATAL: live count mismatch\n"); exit(3); }
    tot += lv;
  }
  if (tot != L) { fprintf(stderr, "FATAL: total live %lld != L\n", (long long)tot); exit(3); }
  return (double)(n_user + n_reloc) / n_user;
}

/* ---------------- analytic reference ---------------- */
/* Greedy/FIFO, uniform writes, large segments: victim utilization u solves
 * u = exp(-a(1-u)), a = physical/logical (1/fill); WA = 1/(1-u). (Desnoyers 2012) */
static double wa_uniform(double a) {
  if (a <= 1.0) return 1e9;
  double lo = 0, hi = 1 - 1e-12;
  for (int i = 0; i < 200; i++) { double mid = 0.5 * (lo + hi); if (exp(-a * (1 - mid)) - mid > 0) lo = mid; else hi = mid; }
  return 1.0 / (1.0 - 0.5 * (lo + hi));
}
static double oracle2(double A, double *bxo) { /* A = physical/logical */
  double lh = HOTFRAC, lc = 1 - HOTFRAC, best = 1e9, bx = 0;
  for (double x = 0.0005; x < 0.9995; x += 0.0005) {
    double ph = lh + x * (A - 1), pc = lc + (1 - x) * (A - 1);
    double wa = HOTPROB * wa_uniform(ph / lh) + (1 - HOTPROB) * wa_uniform(pc / lc);
    if (wa < best) { best = wa; bx = x; }
  }
  if (bxo) *bxo = bx;
  return best;
}
static void analytic(void) {
  double nominal[2] = { 1.0 / FILL, (double)(S - R) / S / FILL };
  const char *nm[2] = { "nominal N=S*B", "effective N=(S-R)*B" };
  for (int k = 0; k < 2; k++) {
    double A = nominal[k], bx, lh = HOTFRAC, lc = 1 - HOTFRAC;
    double best = oracle2(A, &bx), ph = lh + bx * (A - 1);
    printf("analytic %-20s fill=%.2f  uniform(1 class) WA=%.3f  oracle-2class-optimal-split WA=%.3f  "
           "(hot gets %.1f%% of spare; hot fill %.3f, cold fill %.3f)\n",
           nm[k], FILL, wa_uniform(A), best, 100 * bx, lh / ph, lc / (lc + (1 - bx) * (A - 1)));
  }
  double fu = 0, fo = 0;
  for (double f = 0.40; f < 0.99; f += 0.0025) { if (wa_uniform(1 / f) <= 1.6) fu = f; if (oracle2(1 / f, NULL) <= 1.6) fo = f; }
  printf("analytic: max fill (nominal) with WA<=1.6: uniform 1-class %.3f, oracle 2-class %.0f/%.0f skew %.3f\n",
         fu, 100 * HOTPROB, 100 * HOTFRAC, fo);
}

static void usage(void) {
  fprintf(stderr,
    "usage: wasim [-p policy] [-w skew|uniform] [-f fill] [-s seed] [-S segs] [-B blocks] [-R reserve]\n"
    "             [--warm x] [--meas x] [--hotfrac f] [--hotprob p] [--batch k] [--ragemul m] [--quota q]\n"
    "             [-V greedy|cb|cbmean|cbseg] (override victim rule) [--sort] (LFS age-sort, batch 8) [--ellfix x] (SepBIT fixed ell = x*L)\n"
    "  policies: greedy cb cbmean cbsort cbmeansort oracle-greedy oracle-cb sepbit-greedy sepbit-cb\n"
    "            prevage-avg prevage-med prevage-avg-rs prevage-med-rs oracle-part(--quota Qhot) analytic\n");
  exit(1);
}

int main(int argc, char **argv) {
  const char *pol = "greedy", *vict = NULL; int sortflag = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = (i + 1 < argc) ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
    if (ARG("-p")) pol = v;
    else if (ARG("-w")) UNIFORM = !strcmp(v, "uniform");
    else if (ARG("-f")) FILL = atof(v);
    else if (ARG("-s")) SEED = strtoull(v, 0, 10);
    else if (ARG("-S")) S = atoi(v);
    else if (ARG("-B")) B = atoi(v);
    else if (ARG("-R")) R = atoi(v);
    else if (ARG("--warm")) WARM = atof(v);
    else if (ARG("--meas")) MEAS = atof(v);
    else if (ARG("--hotfrac")) HOTFRAC = atof(v);
    else if (ARG("--hotprob")) HOTPROB = atof(v);
    else if (ARG("--batch")) BATCH = atoi(v);
    else if (ARG("--ragemul")) RAGEMUL = atof(v);
    else if (ARG("--quota")) QUOTA_HOT = atoi(v);
    else if (ARG("-V")) vict = v;
    else if (ARG("--ellfix")) ELLFIX = atof(v);
    else if (!strcmp(a, "--sort")) sortflag = 1;
    else usage();
  }
  if (!strcmp(pol, "analytic")) { analytic(); return 0; }
  if (!strcmp(pol, "greedy")) { PLACE = PL_SINGLE; VICTIM = V_GREEDY; }
  else if (!strcmp(pol, "cb")) { PLACE = PL_SINGLE; VICTIM = V_CBMAX; }
  else if (!strcmp(pol, "cbmean")) { PLACE = PL_SINGLE; VICTIM = V_CBMEAN; }
  else if (!strcmp(pol, "cbsort")) { PLACE = PL_SINGLE; VICTIM = V_CBMAX; SORTREL = 1; }
  else if (!strcmp(pol, "cbmeansort")) { PLACE = PL_SINGLE; VICTIM = V_CBMEAN; SORTREL = 1; }
  else if (!strcmp(pol, "oracle-greedy")) { PLACE = PL_ORACLE; VICTIM = V_GREEDY; }
  else if (!strcmp(pol, "oracle-cb")) { PLACE = PL_ORACLE; VICTIM = V_CBMAX; }
  else if (!strcmp(pol, "sepbit-greedy")) { PLACE = PL_SEPBIT; VICTIM = V_GREEDY; }
  else if (!strcmp(pol, "sepbit-cb")) { PLACE = PL_SEPBIT; VICTIM = V_CBMAX; }
  else if (!strncmp(pol, "prevage-", 8)) {
    PLACE = PL_PREVAGE; VICTIM = V_GREEDY;
    THR_MED = strstr(pol, "med") != NULL; RELSPLIT = strstr(pol, "-rs") != NULL;
    if (strstr(pol, "-cb")) VICTIM = V_CBMAX;
  }
  else if (!strcmp(pol, "oracle-part")) { PLACE = PL_ORACLE; VICTIM = V_GREEDY; PARTITION = 1; }
  else usage();
  if (vict) {
    if (!strcmp(vict, "greedy")) VICTIM = V_GREEDY; else if (!strcmp(vict, "cb")) VICTIM = V_CBMAX;
    else if (!strcmp(vict, "cbmean")) VICTIM = V_CBMEAN; else if (!strcmp(vict, "cbseg")) VICTIM = V_CBSEG; else usage();
  }
  if (sortflag) { SORTREL = 1; }
  if (PLACE == PL_SEPBIT && ELLFIX > 0) ell = ELLFIX * (FILL * S * B);
  if (BATCH == 0) BATCH = SORTREL ? 8 : 1;
  if (BATCH < 1 || BATCH > 64) usage();
  clock_t c0 = clock();
  double wa = run();
  double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
  static const char *vn[] = { "greedy", "cb", "cbmean", "cbseg" };
  printf("%-16s V=%-6s%s %-7s fill=%.2f seed=%llu S=%d B=%d R=%d batch=%d  WA=%.4f  victim_u=%.3f",
         pol, vn[VICTIM], SORTREL ? "+sort" : "", UNIFORM ? "uniform" : "skew", FILL, (unsigned long long)SEED,
         S, B, R, BATCH, wa, sum_vu / (n_victims ? n_victims : 1));
  if (PARTITION) printf("  quota_hot=%d quota_cold=%d", quota[0], quota[1]);
  if (PLACE == PL_SEPBIT) printf("  ell=%.0f(%.3fL)", ell, ell / L);
  if (PLACE == PL_PREVAGE) printf("  thr=%.0f(%.3fL)", thr, thr / L);
  printf("  t=%.1fs\n", secs);
  return 0;
}
