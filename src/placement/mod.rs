//! Where a slot process lives: a plain child process group, or a transient
//! systemd scope. The manager sees only [`Placement`]: place a runner, kill
//! it, clean up after it.

pub mod child;
pub mod scope;

/// A placed runner: the process, and the manager's end of its socket.
pub struct Placed {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub control: tokio::net::UnixStream,
    /// The scope unit, under systemd.
    pub unit: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("cannot start the slot runner: {0}")]
    Spawn(#[from] std::io::Error),
}

/// How slots are placed.
pub enum Placement {
    /// Plain child processes, each in its own process group.
    Child,
}

impl Placement {
    pub async fn place(&self, _spec: &crate::slot::report::SlotSpec) -> Result<Placed, PlaceError> {
        match self {
            Placement::Child => {
                let r = child::spawn_runner(&std::env::current_exe()?)?;
                Ok(Placed {
                    child: r.child,
                    pid: r.pid,
                    control: r.control,
                    unit: None,
                })
            }
        }
    }

    /// Kills a slot at once (stop timeout passed).
    pub async fn kill(&self, pid: u32, _unit: Option<&str>) {
        match self {
            Placement::Child => child::kill_group(pid),
        }
    }

    /// After the runner exited: make sure nothing of it is left.
    pub async fn cleanup(&self, pid: u32, _unit: Option<&str>) {
        match self {
            Placement::Child => child::kill_group(pid),
        }
    }
}
