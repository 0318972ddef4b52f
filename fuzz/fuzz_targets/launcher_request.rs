//! The launcher process's decoding of what the (possibly compromised) daemon sends, and the
//! daemon's decoding of the launcher's replies.
//!
//! Checked: no panic on any bytes; a message that decodes encodes back to the same bytes (so
//! nothing is ignored, trailing bytes included); a decoded request names the same program the
//! policy is asked about.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_netd_backends::launcher::protocol::{Reply, Request};
use vhost_user_netd_backends::launcher::LaunchPolicy;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        assert_eq!(request.encode(), data, "request did not round-trip");
        let policy = LaunchPolicy::default();
        if let Request::RunScript { script, .. } = &request {
            assert_eq!(
                policy.permits(script),
                ["/etc/qemu-ifup", "/etc/qemu-ifdown"].contains(&script.as_str())
            );
        }
    }
    if let Ok(reply) = Reply::decode(data) {
        // `Exited` carries any non-zero word as true: compare decoded values only.
        assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
    }
});
