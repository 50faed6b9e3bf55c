//! The status view as the control socket serialises it: the types live in
//! [`crate::view`], below the manager that builds them.

pub use crate::view::*;
