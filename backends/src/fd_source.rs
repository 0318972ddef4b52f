//! Where `fd=NAME` options find their descriptors: inherited numbers on the command line
//! ([`InheritedFds`]), names passed with `getfd` over QMP (the daemon's session table).

use std::os::fd::OwnedFd;

use crate::options::OptionError;
use crate::{sys, Error};

/// A source of descriptors by name.
pub trait FdSource {
    /// Takes ownership of the descriptor `name` refers to.
    fn take_fd(&mut self, name: &str) -> Result<OwnedFd, Error>;
}

/// Descriptors inherited from the parent process, named by number.
#[derive(Debug, Default)]
pub struct InheritedFds {
    taken: Vec<i32>,
}

impl FdSource for InheritedFds {
    fn take_fd(&mut self, name: &str) -> Result<OwnedFd, Error> {
        let bad =
            |why: &str| Error::Option(OptionError::Invalid(format!("descriptor '{name}' {why}")));
        let number: i32 = name
            .parse()
            .map_err(|_| bad("is not a descriptor number"))?;
        if number <= 2 {
            return Err(bad("is one of stdin/stdout/stderr"));
        }
        if self.taken.contains(&number) {
            return Err(bad("is used twice"));
        }
        let fd = sys::adopt_inherited_fd(number).map_err(|_| bad("is not open"))?;
        self.taken.push(number);
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_fds_are_checked() {
        let mut fds = InheritedFds::default();
        assert!(fds.take_fd("abc").is_err());
        assert!(fds.take_fd("1").is_err());
        assert!(fds.take_fd("987654").is_err());
    }
}

/// One descriptor already taken from elsewhere, handed to a backend that asks for it by name
/// (a socket netdev's `fd=` after its type was looked at, a vde switch's data socket).
#[derive(Debug)]
pub struct OneFd(Option<OwnedFd>);

impl OneFd {
    pub fn new(fd: OwnedFd) -> Self {
        OneFd(Some(fd))
    }
}

impl FdSource for OneFd {
    fn take_fd(&mut self, name: &str) -> Result<OwnedFd, Error> {
        self.0.take().ok_or_else(|| {
            Error::Option(OptionError::Invalid(format!(
                "descriptor '{name}' was taken already"
            )))
        })
    }
}
