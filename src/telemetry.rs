//! Tracing set-up: `pretty` or `json` output, `RUST_LOG` honoured over `log.level`, and
//! client faults that actix-http reports as errors logged as warnings.

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Calling it twice (tests) is harmless.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let output = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output = match settings.format {
        LogFormat::Pretty => output.with_target(false).boxed(),
        LogFormat::Json => output.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .with(ClientFaultsAsWarnings)
        .try_init();
}

/// actix-http logs every HTTP/1 connection it drops on a failed request as
/// `error!("stream error: …")`: a NUL in a header, a 100 KB URL, headers not sent within
/// `client_request_timeout`, a client that hung up. Those are the client's fault, and at
/// ERROR any client could page the operator at will. This layer vetoes such an event
/// (for every layer, through `event_enabled`) and logs it again at WARN under
/// `reportd::http`. Failures of reportd's own making keep their level: actix-http logs
/// those (a failing response body, an internal error) with other messages.
struct ClientFaultsAsWarnings;

impl<S: Subscriber> Layer<S> for ClientFaultsAsWarnings {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() != Level::ERROR || !metadata.target().starts_with("actix_http::") {
            return true;
        }
        let mut message = MessageText::default();
        event.record(&mut message);
        let Some(fault) = client_fault(metadata.target(), *metadata.level(), &message.0) else {
            return true;
        };
        // Re-entering the global dispatcher from here is fine; under a thread-scoped
        // dispatcher (`with_default`) the warning would be dropped, never the veto.
        tracing::warn!(target: "reportd::http", error = fault, "dropped a connection: the client's request failed");
        false
    }
}

/// The client's error in an actix-http event that reports one, else None.
fn client_fault<'m>(target: &str, level: Level, message: &'m str) -> Option<&'m str> {
    if level != Level::ERROR || !target.starts_with("actix_http::h1::") {
        return None;
    }
    message.strip_prefix("stream error: ")
}

/// The `message` field of an event, as text.
#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actix_stream_errors_are_client_faults() {
        assert_eq!(
            client_fault(
                "actix_http::h1::dispatcher",
                Level::ERROR,
                "stream error: request parse error: invalid Header provided"
            ),
            Some("request parse error: invalid Header provided")
        );
    }

    #[test]
    fn other_actix_errors_and_other_targets_keep_their_level() {
        let cases = [
            (
                "actix_http::h1::dispatcher",
                Level::ERROR,
                "Response payload stream error: disk gone",
            ),
            (
                "actix_http::h1::dispatcher",
                Level::ERROR,
                "Internal server error: unexpected eof",
            ),
            ("reportd::api", Level::ERROR, "stream error: ours"),
            ("actix_http::h1::dispatcher", Level::WARN, "stream error: x"),
        ];
        for (target, level, message) in cases {
            assert_eq!(client_fault(target, level, message), None, "{message}");
        }
    }
}
