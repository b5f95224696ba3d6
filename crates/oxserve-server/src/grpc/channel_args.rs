//! `--grpc_channel_arguments`: gRPC core channel arguments (`k=v,k=v`), applied where tonic has
//! an equivalent setting. TF Serving hands them to gRPC's `ServerBuilder`, which ignores the ones
//! it does not know; oxserve logs the ones it cannot apply.
//!
//! HTTP/2 flow control. gRPC's C core (TF Serving's transport) starts each stream with a 64 KiB
//! window (`grpc.http2.lookahead_bytes`) and, with `grpc.http2.bdp_probe` on (its default), grows
//! the windows from bandwidth-delay-product estimates, advertising a SETTINGS_MAX_FRAME_SIZE as
//! large as the window it targets. oxserve starts where that estimate ends up for model inputs:
//! fixed windows ([`DEFAULT_STREAM_WINDOW`], [`DEFAULT_CONNECTION_WINDOW`]) and frames as large as
//! the stream window, so a request of a few hundred KB (an image as `tensor_content`) arrives in
//! one frame with no WINDOW_UPDATE round trip, and clients that write one frame per syscall (h2,
//! under tonic) make one write instead of one per 16 KiB. The window is not a buffer: tonic reads
//! each message whole (up to `grpc.max_receive_message_length`) whatever the window.
//! - `grpc.http2.lookahead_bytes=N` sets the stream window (the connection window is at least
//!   [`DEFAULT_CONNECTION_WINDOW`] and at least N);
//! - `grpc.http2.bdp_probe=1` uses hyper's BDP estimator instead (windows start at 64 KiB and grow
//!   with PING round trips, up to 16 MiB, for high-latency links); `=0` keeps fixed windows;
//! - `grpc.http2.max_frame_size=N` sets the frame size (16 KiB to 16 MiB - 1).

use std::time::Duration;

/// TF Serving's `SetMaxMessageSize(kint32max)`: 2 GiB - 1, both ways.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = i32::MAX as usize;

/// The initial HTTP/2 stream window: a few large inputs (a 224x224x3 float image is 602 KB) fit.
pub const DEFAULT_STREAM_WINDOW: u32 = 4 << 20;
/// The initial HTTP/2 connection window, shared by the connection's streams.
pub const DEFAULT_CONNECTION_WINDOW: u32 = 16 << 20;
/// HTTP/2's bounds on SETTINGS_MAX_FRAME_SIZE.
const MIN_FRAME_SIZE: u32 = 1 << 14;
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// HTTP/2's largest flow-control window.
const MAX_WINDOW: u32 = i32::MAX as u32;

/// The HTTP/2 flow-control settings the server runs with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowControl {
    /// Initial stream window (ignored when `adaptive`).
    pub stream_window: u32,
    /// Initial connection window (ignored when `adaptive`).
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame clients may send.
    pub max_frame_size: u32,
    /// hyper's BDP-estimating window (`grpc.http2.bdp_probe=1`).
    pub adaptive: bool,
}

/// The channel arguments tonic can honour, with TF Serving's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelArguments {
    /// `grpc.max_receive_message_length` (alias `grpc.max_message_length`); -1 is unlimited.
    pub max_receive_message_bytes: usize,
    /// `grpc.max_send_message_length`; -1 is unlimited.
    pub max_send_message_bytes: usize,
    /// `grpc.keepalive_time_ms`: HTTP/2 PING interval.
    pub keepalive_time: Option<Duration>,
    /// `grpc.keepalive_timeout_ms`: how long to wait for a PING ack.
    pub keepalive_timeout: Option<Duration>,
    /// `grpc.max_connection_age_ms`.
    pub max_connection_age: Option<Duration>,
    /// `grpc.max_connection_age_grace_ms`.
    pub max_connection_age_grace: Option<Duration>,
    /// `grpc.max_concurrent_streams` (per connection).
    pub max_concurrent_streams: Option<u32>,
    /// `grpc.http2.max_frame_size`.
    pub max_frame_size: Option<u32>,
    /// `grpc.max_metadata_size`: the HTTP/2 header list size limit.
    pub max_metadata_size: Option<u32>,
    /// `grpc.http2.lookahead_bytes`: the initial stream window.
    pub lookahead_bytes: Option<u32>,
    /// `grpc.http2.bdp_probe`: `Some(true)` asks for BDP-estimated windows.
    pub bdp_probe: Option<bool>,
    /// `grpc.server_handshake_timeout_ms`: how long a new connection may take to finish its
    /// handshakes (TLS, then HTTP/2's preface and first SETTINGS); `None` is never.
    pub server_handshake_timeout: Option<Duration>,
    /// Arguments given but not applicable here, as `key=value`.
    pub ignored: Vec<String>,
}

impl Default for ChannelArguments {
    fn default() -> Self {
        ChannelArguments {
            max_receive_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_send_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive_time: None,
            keepalive_timeout: None,
            max_connection_age: None,
            max_connection_age_grace: None,
            max_concurrent_streams: None,
            max_frame_size: None,
            max_metadata_size: None,
            lookahead_bytes: None,
            bdp_probe: None,
            server_handshake_timeout: Some(super::handshake::DEFAULT_HANDSHAKE_TIMEOUT),
            ignored: Vec::new(),
        }
    }
}

impl ChannelArguments {
    /// Parses TF Serving's comma-separated `key=value` list. Values of the arguments oxserve
    /// applies must be integers (gRPC takes them as ints); unknown keys are kept in `ignored`.
    pub fn parse(text: &str) -> Result<ChannelArguments, String> {
        let mut args = ChannelArguments::default();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "--grpc_channel_arguments: expected key=value, got \"{item}\""
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let int = || {
                value.parse::<i64>().map_err(|_| {
                    format!("--grpc_channel_arguments: {key} takes an integer, got \"{value}\"")
                })
            };
            let millis = || {
                int().map(|ms| {
                    // gRPC treats INT_MAX (and anything negative) as "never".
                    (0..i64::from(i32::MAX))
                        .contains(&ms)
                        .then(|| Duration::from_millis(ms as u64))
                })
            };
            let positive_u32 = || int().map(|v| u32::try_from(v).ok().filter(|v| *v > 0));
            let message_bytes = || int().map(|v| usize::try_from(v).unwrap_or(usize::MAX));
            match key {
                "grpc.max_receive_message_length" | "grpc.max_message_length" => {
                    args.max_receive_message_bytes = message_bytes()?
                }
                "grpc.max_send_message_length" => args.max_send_message_bytes = message_bytes()?,
                "grpc.keepalive_time_ms" => args.keepalive_time = millis()?,
                "grpc.keepalive_timeout_ms" => args.keepalive_timeout = millis()?,
                "grpc.max_connection_age_ms" => args.max_connection_age = millis()?,
                "grpc.max_connection_age_grace_ms" => args.max_connection_age_grace = millis()?,
                "grpc.max_concurrent_streams" => args.max_concurrent_streams = positive_u32()?,
                "grpc.http2.max_frame_size" => args.max_frame_size = positive_u32()?,
                "grpc.max_metadata_size" => args.max_metadata_size = positive_u32()?,
                "grpc.http2.lookahead_bytes" => {
                    args.lookahead_bytes = positive_u32()?.map(|v| v.min(MAX_WINDOW))
                }
                // gRPC reads it as a boolean: any non-zero value turns it on.
                "grpc.http2.bdp_probe" => args.bdp_probe = Some(int()? != 0),
                "grpc.server_handshake_timeout_ms" => args.server_handshake_timeout = millis()?,
                _ => args.ignored.push(format!("{key}={value}")),
            }
        }
        Ok(args)
    }

    /// The flow-control settings these arguments ask for (see the module documentation).
    pub fn flow_control(&self) -> FlowControl {
        let stream_window = self.lookahead_bytes.unwrap_or(DEFAULT_STREAM_WINDOW);
        FlowControl {
            stream_window,
            connection_window: stream_window.max(DEFAULT_CONNECTION_WINDOW),
            max_frame_size: self
                .max_frame_size
                .unwrap_or(stream_window)
                .clamp(MIN_FRAME_SIZE, MAX_FRAME_SIZE),
            adaptive: self.bdp_probe == Some(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_tf_serving_defaults() {
        let args = ChannelArguments::parse("").unwrap();
        assert_eq!(args, ChannelArguments::default());
        assert_eq!(args.max_receive_message_bytes, (1 << 31) - 1);
    }

    #[test]
    fn applies_what_tonic_supports_and_keeps_the_rest() {
        let args = ChannelArguments::parse(
            "grpc.max_connection_age_ms=2000, grpc.keepalive_time_ms=10000,grpc.max_receive_message_length=-1,grpc.max_send_message_length=1024,grpc.max_concurrent_streams=8,grpc.http2.min_ping_interval_without_data_ms=5000,grpc.primary_user_agent=x",
        )
        .unwrap();
        assert_eq!(args.max_connection_age, Some(Duration::from_millis(2000)));
        assert_eq!(args.keepalive_time, Some(Duration::from_secs(10)));
        assert_eq!(args.max_receive_message_bytes, usize::MAX);
        assert_eq!(args.max_send_message_bytes, 1024);
        assert_eq!(args.max_concurrent_streams, Some(8));
        assert_eq!(
            args.ignored,
            [
                "grpc.http2.min_ping_interval_without_data_ms=5000",
                "grpc.primary_user_agent=x"
            ]
        );
        let never = ChannelArguments::parse("grpc.max_connection_age_ms=2147483647").unwrap();
        assert_eq!(never.max_connection_age, None);
    }

    #[test]
    fn flow_control_defaults_and_arguments() {
        let defaults = ChannelArguments::default().flow_control();
        assert_eq!(
            defaults,
            FlowControl {
                stream_window: DEFAULT_STREAM_WINDOW,
                connection_window: DEFAULT_CONNECTION_WINDOW,
                max_frame_size: DEFAULT_STREAM_WINDOW,
                adaptive: false,
            }
        );
        let small =
            ChannelArguments::parse("grpc.http2.lookahead_bytes=65536,grpc.http2.bdp_probe=0")
                .unwrap()
                .flow_control();
        assert_eq!(
            (
                small.stream_window,
                small.connection_window,
                small.max_frame_size,
                small.adaptive
            ),
            (65_536, DEFAULT_CONNECTION_WINDOW, 65_536, false)
        );
        let huge = ChannelArguments::parse("grpc.http2.lookahead_bytes=100000000")
            .unwrap()
            .flow_control();
        assert_eq!(huge.connection_window, 100_000_000);
        assert_eq!(huge.max_frame_size, (1 << 24) - 1);
        let tiny =
            ChannelArguments::parse("grpc.http2.lookahead_bytes=1000,grpc.http2.bdp_probe=5")
                .unwrap()
                .flow_control();
        assert_eq!(
            (tiny.stream_window, tiny.max_frame_size, tiny.adaptive),
            (1000, 1 << 14, true)
        );
        let framed = ChannelArguments::parse("grpc.http2.max_frame_size=32768")
            .unwrap()
            .flow_control();
        assert_eq!(framed.max_frame_size, 32_768);
        assert!(ChannelArguments::parse("grpc.http2.lookahead_bytes=-1")
            .unwrap()
            .lookahead_bytes
            .is_none());
    }

    #[test]
    fn malformed_arguments_are_errors() {
        assert!(ChannelArguments::parse("grpc.keepalive_time_ms").is_err());
        let err = ChannelArguments::parse("grpc.max_connection_age_ms=soon").unwrap_err();
        assert_eq!(
            err,
            "--grpc_channel_arguments: grpc.max_connection_age_ms takes an integer, got \"soon\""
        );
    }
}
