//! Gratuitous announcement frames: the RARP QEMU sends after migration (`SEND_RARP`,
//! `announce-self`), so that switches learn where the guest's MAC now lives.

use std::io::{self, IoSlice};

use vhost_user_netd_backends::Backend;

use crate::mac::MacAddr;

/// Ethertype of RARP.
const ETH_P_RARP: u16 = 0x8035;

/// A 60-byte RARP "reverse request" from `mac`, laid out as QEMU's `announce_self_create`.
pub fn rarp_frame(mac: MacAddr) -> [u8; 60] {
    let mac = mac.octets();
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]); // broadcast
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // opcode: reverse request
    f[22..28].copy_from_slice(&mac); // source hardware address
    f[32..38].copy_from_slice(&mac); // target hardware address
    f
}

/// Sends a RARP for `mac` through a queue of `backend`'s own, for a port whose device holds
/// no queue (no frontend, or rings not started).
pub fn send_rarp_on(backend: &dyn Backend, mac: MacAddr) -> io::Result<()> {
    let mut queue = backend.queue(0).map_err(io::Error::other)?;
    let zero = [0u8; vhost_user_netd_backends::VNET_HDR_LEN];
    let hdr: &[u8] = if backend.capabilities().vnet_hdr {
        &zero
    } else {
        &[]
    };
    queue.send(&[IoSlice::new(hdr), IoSlice::new(&rarp_frame(mac))])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_layout() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp_frame(MacAddr(mac));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac);
    }
}
