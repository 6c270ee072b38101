//! The actors of one reportd process, one module each with the messages it handles.
//!
//! - [`status::StatusActor`]: the single, batching writer to `report_queue`.
//! - `poller::PollerActor`: long-polls SQS for as many messages as there are idle workers.
//! - `worker::ReportWorker`: runs one job (or one FIFO group) at a time.
//!
//! Beside them, what the workers share: `fate` (the pure rules for a job's fate) and
//! `run_estimate` (how long an attempt runs lately); and the poller's `waiting_room`
//! (jobs over their user's cap, held until a slot frees).

pub(crate) mod fate;
pub(crate) mod poller;
pub mod registry;
pub(crate) mod run_estimate;
pub mod status;
pub(crate) mod waiting_room;
pub(crate) mod worker;
