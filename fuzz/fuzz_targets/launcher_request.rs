//! The launcher process's decoding of what the (possibly compromised) daemon sends, and the
//! daemon's decoding of the launcher's replies.
//!
//! Checked: no panic on any bytes; a message that decodes encodes back to the same bytes (so
//! nothing is ignored, trailing bytes included); the default policy permits exactly QEMU's
//! default scripts and bridge helper, whatever a request names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_user_netd_backends::launcher::protocol::{Reply, Request};
use vhost_user_netd_backends::launcher::LaunchPolicy;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        assert_eq!(request.encode(), data, "request did not round-trip");
        let policy = LaunchPolicy::default();
        let program = match &request {
            Request::RunScript { script, .. } => Some(script),
            Request::OpenWithHelper { helper, .. } => Some(helper),
            Request::SpawnCommand { command } => Some(command),
            _ => None,
        };
        if let Some(program) = program {
            let defaults = [
                "/etc/qemu-ifup",
                "/etc/qemu-ifdown",
                "/usr/lib/qemu/qemu-bridge-helper",
            ];
            assert_eq!(
                policy.permits(program),
                defaults.contains(&program.as_str())
            );
        }
    }
    if let Ok(reply) = Reply::decode(data) {
        // `Exited` carries any non-zero word as true: compare decoded values only.
        assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
    }
});
