//! The machine event bus: typed events (config applied, service state changes, boot state
//! changes, power actions, API mode changes) kept in a bounded history and sent to live
//! subscribers.
//!
//! Design:
//!
//! - Every event gets an increasing id (unique for the lifetime of machined), the time it
//!   happened, a [`EventKind`], the subject it concerns (a service id, "config", a slot) and
//!   a human-readable message.
//! - [`EventBus::publish`] appends to a ring of the last `capacity` events and sends the
//!   event to a tokio broadcast channel, both under one lock, so that
//!   [`EventBus::subscribe`] (which takes the lock too) returns a history and a receiver with
//!   neither a gap nor a duplicate between them.
//! - A subscriber that falls more than the broadcast capacity behind loses events: its
//!   receiver reports how many, and the Events RPC ends the stream with an error telling the
//!   client to resume with `after_id` (history replay covers the gap while it is still in
//!   the ring).
//!
//! Limits: events are kept in memory only; a restarted machined starts again at id 1.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Events kept for replay by default.
pub const DEFAULT_HISTORY: usize = 1000;
/// How far a live subscriber may fall behind before it loses events.
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// What an event is about (mirrors `basalt.machine.v1.EventKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A configuration was applied, staged or reverted.
    Config,
    /// A service changed state.
    Service,
    /// The boot state changed (machined started, slot committed, upgrade activated,
    /// rollback).
    Boot,
    /// A power action was started (reboot, shutdown, reset).
    Power,
    /// The API listener changed (e.g. maintenance mode ended).
    Api,
}

impl EventKind {
    /// Lowercase name, e.g. "service".
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Config => "config",
            EventKind::Service => "service",
            EventKind::Boot => "boot",
            EventKind::Power => "power",
            EventKind::Api => "api",
        }
    }
}

/// One machine event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Increasing id, from 1.
    pub id: u64,
    /// When it happened.
    pub time: SystemTime,
    /// What it is about.
    pub kind: EventKind,
    /// The object it concerns, e.g. a service id or "config".
    pub subject: String,
    /// Human-readable description.
    pub message: String,
}

struct History {
    next_id: u64,
    ring: VecDeque<Event>,
}

/// The event bus: bounded history plus live broadcast.
pub struct EventBus {
    history: Mutex<History>,
    capacity: usize,
    tx: broadcast::Sender<Event>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY)
    }
}

impl EventBus {
    /// A bus keeping the last `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        Self {
            history: Mutex::new(History {
                next_id: 1,
                ring: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            tx,
        }
    }

    /// Records an event and sends it to live subscribers; returns its id.
    pub fn publish(&self, kind: EventKind, subject: &str, message: impl Into<String>) -> u64 {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let event = Event {
            id: h.next_id,
            time: SystemTime::now(),
            kind,
            subject: subject.to_string(),
            message: message.into(),
        };
        h.next_id += 1;
        if h.ring.len() == self.capacity {
            h.ring.pop_front();
        }
        h.ring.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.tx.send(event.clone());
        event.id
    }

    /// The kept events with an id greater than `after_id`, at most the last `tail` of them
    /// (0: all kept), oldest first, and a receiver for every later event.
    pub fn subscribe(
        &self,
        tail: usize,
        after_id: u64,
    ) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let mut replay: Vec<Event> = h.ring.iter().filter(|e| e.id > after_id).cloned().collect();
        if tail > 0 && replay.len() > tail {
            replay.drain(..replay.len() - tail);
        }
        (replay, rx)
    }

    /// The kept events, oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.subscribe(0, 0).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_ids_increase() {
        let bus = EventBus::new(3);
        for i in 0..5 {
            bus.publish(EventKind::Service, "web", format!("event {i}"));
        }
        let ids: Vec<u64> = bus.history().iter().map(|e| e.id).collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(bus.history()[2].message, "event 4");
    }

    #[test]
    fn tail_and_after_id_select_the_replay() {
        let bus = EventBus::new(10);
        for _ in 0..6 {
            bus.publish(EventKind::Config, "config", "applied");
        }
        let ids = |v: Vec<Event>| v.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(bus.subscribe(2, 0).0), [5, 6]);
        assert_eq!(ids(bus.subscribe(0, 4).0), [5, 6]);
        assert_eq!(ids(bus.subscribe(1, 2).0), [6]);
        assert!(bus.subscribe(0, 6).0.is_empty());
    }

    #[tokio::test]
    async fn subscribers_get_later_events_without_gap_or_duplicate() {
        let bus = EventBus::new(10);
        bus.publish(EventKind::Boot, "machined", "started");
        let (replay, mut rx) = bus.subscribe(0, 0);
        bus.publish(EventKind::Power, "node", "rebooting");
        assert_eq!(replay.len(), 1);
        let live = rx.recv().await.unwrap();
        assert_eq!(live.id, 2);
        assert_eq!(live.kind, EventKind::Power);
        assert!(rx.try_recv().is_err());
    }
}
