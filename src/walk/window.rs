//! Where an interrupted walk resumes: repositories are started in catalog order and
//! finish in any order; the resume point is the last one that is done with every one
//! started before it. Pure, so its bookkeeping is tested without a network.

use std::collections::VecDeque;

use crate::oci::Repository;

/// The repositories started and not yet covered by the resume point, in start order.
#[derive(Debug, Default)]
pub struct Window {
    /// Sequence number of `open[0]`.
    first: u64,
    open: VecDeque<(Repository, bool)>,
    after: Option<Repository>,
}

impl Window {
    /// A window whose resume point starts at `after` (a walk that resumes).
    pub fn new(after: Option<Repository>) -> Self {
        Self {
            after,
            ..Self::default()
        }
    }

    /// Start `repository`; returns its sequence number for [`Window::close`].
    pub fn open(&mut self, repository: Repository) -> u64 {
        self.open.push_back((repository, false));
        self.first + self.open.len() as u64 - 1
    }

    /// `seq` is done: the resume point moves past every done repository at the front.
    pub fn close(&mut self, seq: u64) {
        let Some(i) = seq.checked_sub(self.first).and_then(|i| usize::try_from(i).ok()) else {
            return;
        };
        if let Some(entry) = self.open.get_mut(i) {
            entry.1 = true;
        }
        while self.open.front().is_some_and(|(_, done)| *done) {
            let (repository, _) = self.open.pop_front().expect("a front entry");
            self.first += 1;
            self.after = Some(repository);
        }
    }

    /// The last repository done with every one before it.
    pub fn after(&self) -> Option<&Repository> {
        self.after.as_ref()
    }

    /// The oldest repository not done yet.
    pub fn oldest_open(&self) -> Option<&Repository> {
        self.open.iter().find(|(_, done)| !done).map(|(r, _)| r)
    }

    /// Repositories started and not covered by the resume point.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn repo(i: usize) -> Repository {
        Repository::parse(&format!("r{i:04}")).unwrap()
    }

    #[test]
    fn the_resume_point_waits_for_the_oldest_repository() {
        let mut w = Window::new(None);
        let (a, b, c) = (w.open(repo(0)), w.open(repo(1)), w.open(repo(2)));
        w.close(c);
        w.close(b);
        assert_eq!(w.after(), None, "r0000 is still running");
        assert_eq!(w.oldest_open(), Some(&repo(0)));
        w.close(a);
        assert_eq!(w.after(), Some(&repo(2)));
        assert!(w.is_empty());
        let d = w.open(repo(3));
        w.close(d);
        assert_eq!(w.after(), Some(&repo(3)));
    }

    #[test]
    fn a_resumed_window_starts_from_its_point() {
        let mut w = Window::new(Some(repo(9)));
        let s = w.open(repo(10));
        assert_eq!(w.after(), Some(&repo(9)));
        w.close(s);
        w.close(s);
        assert_eq!(w.after(), Some(&repo(10)));
    }

    proptest! {
        /// Whatever order repositories finish in, the resume point is the longest done
        /// prefix of the start order.
        #[test]
        fn the_resume_point_is_the_longest_done_prefix(order in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle(), cut in 0..40usize) {
            let mut w = Window::new(None);
            let seqs: Vec<u64> = (0..40).map(|i| w.open(repo(i))).collect();
            let done: std::collections::HashSet<usize> = order[..cut].iter().copied().collect();
            for i in &order[..cut] {
                w.close(seqs[*i]);
            }
            let prefix = (0..40).take_while(|i| done.contains(i)).count();
            let want = prefix.checked_sub(1).map(repo);
            prop_assert_eq!(w.after(), want.as_ref());
            prop_assert_eq!(w.len(), 40 - prefix);
        }
    }
}
