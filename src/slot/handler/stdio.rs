//! TODO (stub)
use super::*;
pub struct StdioHandler;
impl StdioHandler {
    pub async fn start(_w: &WorkerConfig, _id: &SlotIdentity) -> Result<Self, HandlerError> { Ok(StdioHandler) }
    pub async fn run(&mut self, _job: &Job, _e: &mpsc::Sender<JobEvent>, _t: Option<Duration>) -> Outcome { Outcome::Fail(FailReason::Spawn("stub".into())) }
    pub fn pid(&self) -> Option<u32> { None }
    pub async fn shutdown(self) {}
}
