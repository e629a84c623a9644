# Shared by the A/B bench scripts that alternate two binaries (sourced, not run).

# The median of the numbers on stdin (space or newline separated).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# keep_latency SIDE JSON: appends an `unblend bench --json` report's max, p99.9 and p99
# latency (µs) to the arrays max, p999 and p99 (declared -A by the caller) under SIDE.
keep_latency() {
  max[$1]+=" $(jq .total.lat_us.max <<<"$2")"
  p999[$1]+=" $(jq .total.lat_us.p999 <<<"$2")"
  p99[$1]+=" $(jq .total.lat_us.p99 <<<"$2")"
}

# latency_medians SIDE: the medians keep_latency gathered, as "max_us M p999_us M p99_us M".
latency_medians() {
  echo "max_us $(median <<<"${max[$1]}") p999_us $(median <<<"${p999[$1]}") p99_us $(median <<<"${p99[$1]}")"
}
