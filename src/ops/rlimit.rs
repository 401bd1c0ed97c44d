//! The open-files limit. Every tracker connection is a file descriptor, and distributions
//! start services with a soft limit of 1024 while allowing far more: the daemon raises its soft
//! limit to the hard one at start (systemd's `LimitNOFILE` sets the hard limit).

/// Soft and hard `RLIMIT_NOFILE` before and after raising the soft limit to the hard one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

impl NoFile {
    /// Whether the soft limit actually went up (it was already at the hard limit otherwise).
    pub fn raised(&self) -> bool {
        self.soft > self.soft_before
    }

    /// The start-up log line's message: says "raised" only when something changed.
    pub fn describe(&self) -> &'static str {
        if self.raised() {
            "open-files limit (RLIMIT_NOFILE) raised to the hard limit"
        } else {
            "open-files limit (RLIMIT_NOFILE) already at the hard limit"
        }
    }
}

/// Raise the soft open-files limit to the hard limit.
pub fn raise_nofile() -> std::io::Result<NoFile> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(NoFile {
        soft_before: before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let n = raise_nofile().unwrap();
        assert_eq!(n.soft, n.hard);
        assert!(n.soft >= n.soft_before);
        let again = raise_nofile().unwrap();
        assert_eq!(again.soft_before, n.hard);
        assert!(!again.raised(), "nothing left to raise: {again:?}");
        assert!(again.describe().contains("already"), "{}", again.describe());
    }

    #[test]
    fn only_a_change_is_called_raised() {
        let up = NoFile {
            soft_before: 1024,
            soft: 524_288,
            hard: 524_288,
        };
        assert!(up.raised());
        assert!(up.describe().contains("raised"));
        let same = NoFile {
            soft_before: 524_288,
            ..up
        };
        assert!(!same.raised());
        assert!(!same.describe().contains("raised"), "{}", same.describe());
    }
}
