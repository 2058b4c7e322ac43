//! How a download asks for its plan: the fields of `PlanRequest` beyond the task,
//! as the peer's engine and the scheduler's core both speak of them.

/// How a download opens its plan stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOpening {
    /// The download had a plan with a scheduler replica that left, and re-opens it.
    /// A replica that first hears of a task this way waits briefly (its resume
    /// grace) before it elects a back-to-source peer.
    pub resumed: bool,
    /// The download streams the task from upstream now: the replica counts it as
    /// the task's back-to-source peer instead of electing another, while the task
    /// has a free source slot.
    pub from_upstream: bool,
}

impl PlanOpening {
    /// A lost plan re-opened; `from_upstream`: the download streams from upstream.
    pub fn reopen(from_upstream: bool) -> Self {
        PlanOpening {
            resumed: true,
            from_upstream,
        }
    }
}
