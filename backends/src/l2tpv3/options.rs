//! `NetdevL2TPv3Options`, with QEMU's checks and error texts.

use serde_json::{Map, Value};

use super::header::HeaderLayout;
use crate::options::{OptionError, Opts};

/// Options of an `l2tpv3` netdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2tpv3Options {
    pub src: String,
    pub dst: String,
    pub srcport: Option<String>,
    pub dstport: Option<String>,
    pub ipv6: Option<bool>,
    pub udp: Option<bool>,
    pub cookie64: Option<bool>,
    pub counter: Option<bool>,
    pub pincounter: Option<bool>,
    pub txcookie: Option<u64>,
    pub rxcookie: Option<u64>,
    pub txsession: u32,
    pub rxsession: Option<u32>,
    pub offset: Option<u32>,
}

impl L2tpv3Options {
    pub fn from_opts(opts: &mut Opts) -> Result<Self, OptionError> {
        let o = L2tpv3Options {
            src: opts.require_str("src")?,
            dst: opts.require_str("dst")?,
            srcport: opts.take_str("srcport")?,
            dstport: opts.take_str("dstport")?,
            ipv6: opts.take_bool("ipv6")?,
            udp: opts.take_bool("udp")?,
            cookie64: opts.take_bool("cookie64")?,
            counter: opts.take_bool("counter")?,
            pincounter: opts.take_bool("pincounter")?,
            txcookie: opts.take_u64("txcookie")?,
            rxcookie: opts.take_u64("rxcookie")?,
            txsession: opts
                .take_u32("txsession")?
                .ok_or_else(|| OptionError::Missing(opts.name_of("txsession")))?,
            rxsession: opts.take_u32("rxsession")?,
            offset: opts.take_u32("offset")?,
        };
        o.layout()?;
        Ok(o)
    }

    /// UDP encapsulation (`udp=on`), else IP protocol 115.
    pub fn is_udp(&self) -> bool {
        self.udp == Some(true)
    }

    /// The header these options describe; refuses what QEMU refuses, in its words.
    pub fn layout(&self) -> Result<HeaderLayout, OptionError> {
        let invalid = |s: &str| Err(OptionError::Invalid(s.to_string()));
        if self.offset.is_some_and(|o| o > 256) {
            return invalid("offset must be less than 256 bytes");
        }
        let cookies = match (self.txcookie, self.rxcookie) {
            (Some(tx), Some(rx)) => {
                // QEMU switches to 64-bit cookies when `cookie64` is given at all, even as off;
                // the same here keeps both ends of a link in agreement.
                let is64 = self.cookie64.is_some();
                if !is64 && (tx > u64::from(u32::MAX) || rx > u64::from(u32::MAX)) {
                    return invalid("txcookie and rxcookie must fit in 32 bits unless cookie64=on");
                }
                Some((tx, rx, is64))
            }
            (None, None) => None,
            _ => return invalid("require both 'rxcookie' and 'txcookie' or neither"),
        };
        if self.is_udp() && (self.srcport.is_none() || self.dstport.is_none()) {
            return invalid("need both src and dst port for udp");
        }
        let ipv6 = self.ipv6 == Some(true);
        Ok(HeaderLayout {
            udp: self.is_udp(),
            rx_ip_header: !self.is_udp() && !ipv6,
            tx_session: self.txsession,
            rx_session: self.rxsession.unwrap_or(self.txsession),
            cookies,
            // QEMU adds the counter field only for `counter`; `pincounter` alone zeroes a field
            // that is not sent.
            counter: self.counter == Some(true),
            pin_counter: self.pincounter == Some(true),
            offset: self.offset.unwrap_or(0),
        })
    }

    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("src".into(), self.src.clone().into());
        m.insert("dst".into(), self.dst.clone().into());
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put("srcport", self.srcport.clone().map(Value::from));
        put("dstport", self.dstport.clone().map(Value::from));
        put("ipv6", self.ipv6.map(Value::from));
        put("udp", self.udp.map(Value::from));
        put("cookie64", self.cookie64.map(Value::from));
        put("counter", self.counter.map(Value::from));
        put("pincounter", self.pincounter.map(Value::from));
        put("txcookie", self.txcookie.map(Value::from));
        put("rxcookie", self.rxcookie.map(Value::from));
        put("txsession", Some(self.txsession.into()));
        put("rxsession", self.rxsession.map(Value::from));
        put("offset", self.offset.map(Value::from));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<L2tpv3Options, OptionError> {
        let mut opts = Opts::parse_keyval(text)?;
        opts.take_value("type");
        let o = L2tpv3Options::from_opts(&mut opts)?;
        opts.finish()?;
        Ok(o)
    }

    const BASE: &str = "l2tpv3,src=127.0.0.1,dst=127.0.0.1,txsession=1";

    #[test]
    fn qemu_rules_and_wording() {
        let err = |extra: &str| parse(&format!("{BASE}{extra}")).unwrap_err().to_string();
        assert_eq!(err(",udp=on"), "need both src and dst port for udp");
        assert_eq!(
            err(",udp=on,srcport=1"),
            "need both src and dst port for udp"
        );
        assert_eq!(
            err(",txcookie=5"),
            "require both 'rxcookie' and 'txcookie' or neither"
        );
        assert_eq!(err(",offset=257"), "offset must be less than 256 bytes");
        assert!(err(",txcookie=5000000000,rxcookie=1").contains("cookie64"));
        assert_eq!(
            parse("l2tpv3,src=a,dst=b").unwrap_err().to_string(),
            "Parameter 'txsession' is missing"
        );
        let o = parse(&format!(
            "{BASE},udp=on,srcport=1,dstport=2,txcookie=5000000000,rxcookie=7,cookie64=on,counter=on,offset=256,rxsession=9"
        ))
        .unwrap();
        let l = o.layout().unwrap();
        assert_eq!(
            (l.rx_session, l.tx_session, l.header_len()),
            (9, 1, 4 + 4 + 8 + 4 + 256)
        );
        // QEMU's quirk: cookie64 given as off still means 64-bit cookies.
        let l = parse(&format!("{BASE},txcookie=1,rxcookie=1,cookie64=off"))
            .unwrap()
            .layout()
            .unwrap();
        assert_eq!(l.cookies, Some((1, 1, true)));
        // Raw IPv4 receives carry the IP header; IPv6 and UDP do not.
        assert!(parse(BASE).unwrap().layout().unwrap().rx_ip_header);
        assert!(
            !parse(&format!("{BASE},ipv6=on"))
                .unwrap()
                .layout()
                .unwrap()
                .rx_ip_header
        );
    }

    #[test]
    fn round_trips_through_json() {
        let o = parse(&format!(
            "{BASE},udp=on,srcport=1,dstport=2,txcookie=3,rxcookie=4"
        ))
        .unwrap();
        let mut back = Opts::new(o.to_json(), crate::OptionSource::Json);
        assert_eq!(L2tpv3Options::from_opts(&mut back).unwrap(), o);
    }
}
