//! How the runtime's gates announce a change to every controller: one bounded channel per subscriber (a full
//! one already carries a nudge), and a watch stream listed into its store before a gate is handed out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::watcher;

/// Where a change is announced: one bounded channel per subscriber.
#[derive(Clone, Default)]
pub struct Subscribers(Arc<Mutex<Vec<mpsc::Sender<()>>>>);

impl Subscribers {
    /// A change stream: it yields whenever the gate announces a change. One per controller and scope.
    pub fn subscribe(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel::<()>(1);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }

    /// Announces a change. A full channel already carries a pending nudge; a closed one has gone away.
    pub fn nudge(&self) {
        let mut senders = self.0.lock().unwrap_or_else(|p| p.into_inner());
        senders.retain_mut(|s| match s.try_send(()) {
            Ok(()) => true,
            Err(e) => !e.is_disconnected(),
        });
    }

    /// Ends every change stream (the gate's source ended).
    pub fn close(&self) {
        for mut s in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            s.close_channel();
        }
    }
}

/// Lists a watch stream into its store before returning (no `Store::wait_until_ready`: it wakes one waiter).
/// False when the first list did not finish within 30 s.
pub async fn listed<S, E>(stream: &mut S) -> bool
where
    S: futures::Stream<Item = Result<watcher::Event<E>, watcher::Error>> + Unpin,
{
    let first_list = async {
        while let Some(event) = stream.next().await {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(30), first_list)
        .await
        .unwrap_or(false)
}
