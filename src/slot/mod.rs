//! The slot runner process (`slotman slot`, started by a manager).

pub mod handler;
pub mod report;
