//! Fault injection for the simulated admin API: the [`Faults`] settings (also the JSON of `/_sim/faults`)
//! and a lock-free, seeded dice roller. Faults apply to admin API paths only, never to `/_sim`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::fleet::{GOLDEN_GAMMA, SplitMix64};

/// What goes wrong, and how often. All zero/false (the default) means a well-behaved service.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// Probability (0..=1) that an admin request is answered with `error_status` instead.
    pub error_rate: f64,
    /// Status of injected errors: 500 or 503 (any 5xx, or 429, is accepted).
    pub error_status: u16,
    /// `Retry-After` (seconds) sent with injected errors.
    pub retry_after_seconds: Option<u64>,
    /// Delay added to every admin request.
    pub latency_ms: u64,
    /// Probability (0..=1) that an accepted action's connection is closed without a response.
    pub drop_after_accept_rate: f64,
    /// Accepted actions stay in their transitional status until this is lifted or the status is set.
    pub never_finish: bool,
    /// Queued actions: an accepted action shows nothing (the status does not move) for this long, then runs.
    pub queue_ms: u64,
    /// A gateway that loses answers: the first restart/reset on each instance is carried out and then
    /// answered 503 (with `Retry-After`, default 1 s), as a gateway in front of the admin API may do.
    pub gateway503_first_one_shot: bool,
    /// Extra delay of every list page (a large platform's slow pages), in milliseconds, on top of `latencyMs`.
    pub list_page_delay_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 503,
            retry_after_seconds: None,
            latency_ms: 0,
            drop_after_accept_rate: 0.0,
            never_finish: false,
            queue_ms: 0,
            gateway503_first_one_shot: false,
            list_page_delay_ms: 0,
        }
    }
}

impl Faults {
    /// Check ranges; the message is fit for a 400 body.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("errorRate", self.error_rate),
            ("dropAfterAcceptRate", self.drop_after_accept_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if !valid_error_status(self.error_status) {
            return Err("errorStatus must be 429 or a 5xx status such as 500 or 503".into());
        }
        Ok(())
    }
}

/// Statuses an injected error may have.
pub fn valid_error_status(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// A probability in `0..=1`, for command-line parsing.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

/// An injected error status, for command-line parsing.
pub fn parse_error_status(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(code) if valid_error_status(code) => Ok(code),
        _ => Err(format!("{s:?} is not 429 or a 5xx status (e.g. 500, 503)")),
    }
}

/// Seeded dice shared by all requests; each roll is one atomic add.
#[derive(Debug)]
pub struct Dice(AtomicU64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(SplitMix64::mix(seed ^ 0xD1CE)))
    }

    /// True with probability `p` (false for `p <= 0` or NaN, true for `p >= 1`, no roll spent on either).
    pub fn roll(&self, p: f64) -> bool {
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        let state = self
            .0
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        let unit = (SplitMix64::mix(state) >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_camel_case_with_defaults() {
        let f: Faults = serde_json::from_str(r#"{"errorRate":0.5,"neverFinish":true}"#).unwrap();
        assert_eq!(
            f,
            Faults {
                error_rate: 0.5,
                never_finish: true,
                ..Faults::default()
            }
        );
        let v = serde_json::to_value(Faults::default()).unwrap();
        for key in [
            "errorRate",
            "errorStatus",
            "retryAfterSeconds",
            "latencyMs",
            "dropAfterAcceptRate",
            "neverFinish",
            "queueMs",
            "gateway503FirstOneShot",
            "listPageDelayMs",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(
            serde_json::from_str::<Faults>(r#"{"error_rate":1}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn validation_table() {
        let cases = [
            (Faults::default(), true),
            (
                Faults {
                    error_rate: 1.0,
                    error_status: 500,
                    ..Faults::default()
                },
                true,
            ),
            (
                Faults {
                    error_status: 429,
                    ..Faults::default()
                },
                true,
            ),
            (
                Faults {
                    error_rate: 1.5,
                    ..Faults::default()
                },
                false,
            ),
            (
                Faults {
                    error_rate: f64::NAN,
                    ..Faults::default()
                },
                false,
            ),
            (
                Faults {
                    drop_after_accept_rate: -0.1,
                    ..Faults::default()
                },
                false,
            ),
            (
                Faults {
                    error_status: 404,
                    ..Faults::default()
                },
                false,
            ),
            (
                Faults {
                    error_status: 200,
                    ..Faults::default()
                },
                false,
            ),
        ];
        for (f, ok) in cases {
            assert_eq!(f.validate().is_ok(), ok, "{f:?}");
        }
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert!(parse_rate("2").is_err());
        assert_eq!(parse_error_status("500"), Ok(500));
        assert!(parse_error_status("404").is_err());
    }

    #[test]
    fn dice_follow_the_rate() {
        let d = Dice::new(1);
        assert!(!d.roll(0.0) && !d.roll(f64::NAN) && d.roll(1.0));
        let hits = (0..10_000).filter(|_| d.roll(0.3)).count();
        assert!((2_700..3_300).contains(&hits), "{hits}");
    }
}
