//! The frames the tap measurements send: UDP for the fixed sizes, TCP with a partial checksum for
//! the GSO runs, addressed to a MAC the tap does not own so the kernel drops them right after
//! receiving them (the cost measured is getting them in and out of the tap, not a protocol).

/// The destination every measurement frame carries (no interface here has it).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const ETH_IPV4_TCP: usize = 14 + 20 + 20;

fn ipv4_header(out: &mut Vec<u8>, protocol: u8, payload_len: usize) {
    let total = (20 + payload_len) as u16;
    let start = out.len();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    out.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
    let sum = out[start..]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !((folded & 0xffff) + (folded >> 16)) as u16;
    out[start + 10..start + 12].copy_from_slice(&csum.to_be_bytes());
}

fn ethernet(out: &mut Vec<u8>) {
    out.extend_from_slice(&DST_MAC);
    out.extend_from_slice(&SRC_MAC);
    out.extend_from_slice(&[0x08, 0x00]);
}

/// A UDP/IPv4 frame of exactly `len` bytes (at least 42).
pub fn udp(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    ethernet(&mut f);
    ipv4_header(&mut f, 17, len - 34);
    let udp_len = (len - 34) as u16;
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x3a]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(len, 0xa5);
    f
}

/// A TCP/IPv4 frame of `len` bytes (at least 54; up to 14 + 65535).
pub fn tcp(len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    ethernet(&mut f);
    ipv4_header(&mut f, 6, len - 34);
    f.extend_from_slice(&[
        0x30, 0x39, 0x30, 0x3a, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.resize(len, 0x5a);
    f
}

/// The virtio-net header (the 10-byte `virtio_net_hdr`; `num_buffers` is added by callers that
/// use the 12-byte form) of a TCP/IPv4 frame: GSO at `mss` with a partial checksum, or none.
pub fn vnet_header(gso_mss: Option<u16>) -> [u8; 10] {
    let mut h = [0u8; 10];
    if let Some(mss) = gso_mss {
        h[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        h[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        h[2..4].copy_from_slice(&(ETH_IPV4_TCP as u16).to_le_bytes());
        h[4..6].copy_from_slice(&mss.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
        h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset: TCP's checksum field
    }
    h
}

/// `[header, frame]` as the iovec pair a `writev` or `sendmmsg` takes (the kernel only reads them).
pub fn iovecs(header: &[u8], frame: &[u8]) -> [libc::iovec; 2] {
    [
        libc::iovec {
            iov_base: header.as_ptr() as *mut libc::c_void,
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ]
}
