//! Front ends: the protocols guests and hosts use to reach bdevs. Each owns its connections or
//! virtqueues and speaks only the `Bdev` trait below it.

pub mod vhost_blk;
