//! Extractors that make socketioxide's handlers answer every input and keep order.
//!
//! socketioxide runs each event's handler as its own task, so two `chat` events from
//! one socket could commit out of order; but it runs extractors synchronously, in the
//! order packets arrive. [`InOrder`] takes a ticket there, and the handler waits for
//! its turn. And a payload that does not fit `Data<T>` is dropped without an ack, so
//! [`Payload`] never fails: it hands the handler the JSON or the error to answer with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::adapter::ChatAdapter;
use socketioxide::extract::TryData;
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::Socket;
use tokio::sync::watch;

use crate::error::Error;

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
    fn ticket(self: &Arc<Self>) -> Ticket {
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
