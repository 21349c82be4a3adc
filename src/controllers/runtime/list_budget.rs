//! The list budget: the share of `--api-rate` that list walks may use together (the instance view's rounds and
//! every fleet's walks), so that no number of fleets starves instance actions, and one walk at a time per
//! namespace, so that one namespace's many fleets cannot starve another namespace's fleet.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::api::limiter::Limiter;

/// Shared by every list walk of one operator.
#[derive(Debug)]
pub struct ListBudget {
    pages: Limiter,
    walking: Arc<Mutex<HashSet<String>>>,
}

/// Held while a namespace walks; dropping it lets the namespace's next fleet walk.
#[derive(Debug)]
pub struct WalkTurn {
    namespace: String,
    walking: Arc<Mutex<HashSet<String>>>,
}

impl Drop for WalkTurn {
    fn drop(&mut self) {
        self.walking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.namespace);
    }
}

impl ListBudget {
    /// `rate` list requests per second for all walks together (at least one request every ten seconds).
    pub fn new(rate: f64) -> Self {
        let rate = rate.max(0.1);
        Self {
            // A small burst lets a short walk finish at once; longer walks are paced.
            pages: Limiter::new(rate, rate.ceil().max(1.0) as u32, 4),
            walking: Arc::default(),
        }
    }

    /// The namespace's turn to walk, or `None` while another of its fleets walks.
    pub fn turn(&self, namespace: &str) -> Option<WalkTurn> {
        let mut walking = self.walking.lock().unwrap_or_else(|p| p.into_inner());
        walking.insert(namespace.to_owned()).then(|| WalkTurn {
            namespace: namespace.to_owned(),
            walking: self.walking.clone(),
        })
    }

    /// Waits for the budget of one list request (page or GET).
    pub async fn page(&self) {
        drop(self.pages.acquire().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_walk_per_namespace_at_a_time() {
        let budget = ListBudget::new(5.0);
        let a = budget.turn("a").expect("a walks");
        assert!(budget.turn("a").is_none(), "a second walk of a waits");
        let b = budget.turn("b");
        assert!(b.is_some(), "another namespace is not held back by a");
        drop(a);
        assert!(budget.turn("a").is_some(), "a walks again once its walk ended");
    }
}
