//! Extractors that make socketioxide's handlers answer every input and keep order.
//!
//! socketioxide runs each event's handler as its own task, so two `chat` events from
//! one socket could commit out of order; but it runs extractors synchronously, in the
//! order packets arrive. [`InOrder`] takes a ticket there, and the handler waits for
//! its turn; [`Received`] counts the event and, for those that change something,
//! holds its place among the acks a drain waits for, from the moment it arrived. A
//! payload that does not fit `Data<T>` is dropped without an ack, so [`Payload`]
//! never fails: it hands the handler the JSON or the error to answer with. [`Live`]
//! is the app, for a handler of an instance that is still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::adapter::ChatAdapter;
use socketioxide::extract::{State, TryData};
use socketioxide::handler::{FromConnectParts, FromDisconnectParts, FromMessageParts, Value};
use socketioxide::socket::{DisconnectReason, Socket};
use tokio::sync::watch;

use super::AppRef;
use crate::app::App;
use crate::drain::InFlight;
use crate::error::Error;
use crate::metrics as m;

/// The events a handler is registered for, by number (the parameter of [`Received`]).
pub mod event {
    pub const JOIN: u8 = 0;
    pub const LEAVE: u8 = 1;
    pub const CHAT: u8 = 2;
    pub const READ: u8 = 3;
    pub const HISTORY: u8 = 4;
    pub const TYPING: u8 = 5;
    pub const UNKNOWN: u8 = 6;
    /// Their names (metric labels); `unknown` stands for any other event.
    pub(super) const NAMES: [&str; 7] = ["join", "leave", "chat", "read", "history", "typing", "unknown"];
}

/// An event being handled: which one and when it arrived, for the metrics, and, for
/// an event that may change something (all but `typing` and unknown ones), its place
/// among the acks a drain waits for.
pub struct Received<const EVENT: u8> {
    pub event: &'static str,
    pub at: std::time::Instant,
    _in_flight: Option<InFlight>,
}

impl<A: ChatAdapter, const EVENT: u8> FromMessageParts<A> for Received<EVENT> {
    type Error = std::convert::Infallible;
    fn from_message_parts(s: &Arc<Socket<A>>, v: &mut Value, ack: &Option<i64>) -> Result<Self, Self::Error> {
        let event = event::NAMES[EVENT as usize];
        metrics::counter!(m::EVENTS_IN, "event" => event).increment(1);
        let tracked = !matches!(EVENT, event::TYPING | event::UNKNOWN);
        let in_flight = if tracked {
            Live::from_message_parts(s, v, ack).ok().map(|Live(app)| app.drain.track(s.id))
        } else {
            None
        };
        Ok(Self { event, at: std::time::Instant::now(), _in_flight: in_flight })
    }
}

/// The running app. A handler whose instance has stopped is not called.
pub struct Live(pub Arc<App>);

/// The instance behind a handler has stopped.
#[derive(Debug, thiserror::Error)]
#[error("unavailable: this instance is stopping")]
pub struct Stopped;

fn live(state: Option<AppRef>) -> Result<Live, Stopped> {
    state.and_then(|AppRef(app)| app.upgrade()).map(Live).ok_or(Stopped)
}

impl<A: ChatAdapter> FromMessageParts<A> for Live {
    type Error = Stopped;
    fn from_message_parts(s: &Arc<Socket<A>>, v: &mut Value, ack: &Option<i64>) -> Result<Self, Stopped> {
        live(State::<AppRef>::from_message_parts(s, v, ack).ok().map(|State(app)| app))
    }
}

impl<A: ChatAdapter> FromConnectParts<A> for Live {
    type Error = Stopped;
    fn from_connect_parts(s: &Arc<Socket<A>>, auth: &Option<Value>) -> Result<Self, Stopped> {
        live(State::<AppRef>::from_connect_parts(s, auth).ok().map(|State(app)| app))
    }
}

impl<A: ChatAdapter> FromDisconnectParts<A> for Live {
    type Error = Stopped;
    fn from_disconnect_parts(s: &Arc<Socket<A>>, reason: DisconnectReason) -> Result<Self, Stopped> {
        live(State::<AppRef>::from_disconnect_parts(s, reason).ok().map(|State(app)| app))
    }
}

/// Serves a socket's events one at a time, in arrival order.
#[derive(Debug)]
pub struct Turnstile {
    issued: AtomicU64,
    serving: watch::Sender<u64>,
}

impl Default for Turnstile {
    fn default() -> Self {
        Self { issued: AtomicU64::new(0), serving: watch::Sender::new(0) }
    }
}

impl Turnstile {
    pub(super) fn ticket(self: &Arc<Self>) -> Ticket {
        Ticket { number: self.issued.fetch_add(1, Ordering::SeqCst), turnstile: Some(self.clone()) }
    }
}

/// A place in a socket's queue. Waiting yields a [`Turn`]; dropping either lets the
/// next ticket go, so a failed or panicking handler cannot stall the socket.
#[derive(Debug)]
pub struct Ticket {
    number: u64,
    turnstile: Option<Arc<Turnstile>>,
}

/// Holds the socket's turn until dropped.
#[derive(Debug)]
pub struct Turn {
    _ticket: Ticket,
}

impl Ticket {
    pub async fn wait(mut self) -> Turn {
        if let Some(t) = &self.turnstile {
            let mut rx = t.serving.subscribe();
            let number = self.number;
            // The sender lives in the turnstile we hold, so this cannot fail.
            let _ = rx.wait_for(|serving| *serving == number).await;
        }
        Turn { _ticket: Ticket { number: self.number, turnstile: self.turnstile.take() } }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(t) = self.turnstile.take() else {
            return;
        };
        let number = self.number;
        if *t.serving.borrow() == number {
            t.serving.send_modify(|s| *s += 1);
        } else {
            // Dropped before its turn (the handler never ran): pass when it comes.
            tokio::spawn(async move {
                let mut rx = t.serving.subscribe();
                let _ = rx.wait_for(|serving| *serving == number).await;
                t.serving.send_modify(|s| *s += 1);
            });
        }
    }
}

/// Places the event in its socket's queue (see the module doc).
pub struct InOrder(pub Ticket);

impl<A: ChatAdapter> FromMessageParts<A> for InOrder {
    type Error = std::convert::Infallible;
    fn from_message_parts(s: &Arc<Socket<A>>, _: &mut Value, _: &Option<i64>) -> Result<Self, Self::Error> {
        let turnstile = s.extensions.get::<Arc<Turnstile>>().unwrap_or_else(|| {
            // Every socket gets one when admitted; a fresh one still answers in order
            // for this event alone.
            let t = Arc::new(Turnstile::default());
            s.extensions.insert(t.clone());
            t
        });
        Ok(InOrder(turnstile.ticket()))
    }
}

/// The socket's close takes its place in the queue too: its handler runs after every
/// event that arrived before it, and after the connect's own rejoin, so that what
/// they enter (rooms, presence) is there for it to leave.
impl<A: ChatAdapter> FromDisconnectParts<A> for InOrder {
    type Error = std::convert::Infallible;
    fn from_disconnect_parts(s: &Arc<Socket<A>>, _: DisconnectReason) -> Result<Self, Self::Error> {
        let turnstile = s.extensions.get::<Arc<Turnstile>>().unwrap_or_default();
        Ok(InOrder(turnstile.ticket()))
    }
}

/// The event's first argument as JSON, or why it cannot be used.
pub struct Payload(pub Result<serde_json::Value, Error>);

impl Payload {
    /// The payload as `T`, or `invalid` naming what did not fit.
    pub fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        serde_json::from_value(self.0?).map_err(|e| Error::invalid(format!("bad payload: {e}")))
    }
}

impl<A: ChatAdapter> FromMessageParts<A> for Payload {
    type Error = std::convert::Infallible;
    fn from_message_parts(s: &Arc<Socket<A>>, v: &mut Value, ack: &Option<i64>) -> Result<Self, Self::Error> {
        // The parser refuses binary packets at their header (`listener::with_limits`);
        // this stays as the answer should an attachment ever get this far.
        let has_binary = match v {
            Value::Str(_, Some(bins)) => !bins.is_empty(),
            Value::Str(_, None) => false,
            Value::Bytes(_) => true,
        };
        if has_binary {
            return Ok(Payload(Err(Error::invalid("binary attachments are not accepted"))));
        }
        let TryData(data) = TryData::<serde_json::Value>::from_message_parts(s, v, ack)?;
        Ok(Payload(data.map_err(|e| Error::invalid(format!("the payload is not valid JSON data: {e}")))))
    }
}
