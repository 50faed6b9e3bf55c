//! TODO (stub)
use super::*;
pub struct ExecHandler;
impl ExecHandler {
    pub fn new(_w: &WorkerConfig, _id: &SlotIdentity) -> Self { ExecHandler }
    pub async fn run(&mut self, _job: &Job, _e: &mpsc::Sender<JobEvent>, _t: Option<Duration>) -> Outcome { Outcome::Fail(FailReason::Spawn("stub".into())) }
}
