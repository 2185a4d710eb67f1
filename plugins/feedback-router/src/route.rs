//! Choosing the target and building the payload: plain functions, testable on
//! the host.

use serde_json::{Value, json};

/// Rating key -> target (`None`: do not publish).
#[derive(Debug)]
pub struct Routes {
    targets: Vec<(String, Option<String>)>,
}

/// One notification to publish.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub target: String,
    pub payload: String,
}

impl Routes {
    /// Parses the config (JSON text) over the defaults.
    pub fn from_config(text: &str) -> Result<Self, String> {
        let mut targets: Vec<(String, Option<String>)> =
            [("up", "good"), ("down", "bad"), ("none", "neutral")]
                .into_iter()
                .map(|(rating, target)| (rating.to_owned(), Some(target.to_owned())))
                .collect();
        let config: Value =
            serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?;
        let config = config.as_object().ok_or("config must be a JSON object")?;
        for (key, value) in config {
            if key != "targets" {
                return Err(format!("unknown config key {key:?}"));
            }
            let table = value
                .as_object()
                .ok_or("\"targets\" must be an object mapping ratings to target names")?;
            for (rating, target) in table {
                let target = match target {
                    Value::Null => None,
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    _ => {
                        return Err(format!(
                            "target for rating {rating:?} must be a non-empty string or null"
                        ));
                    }
                };
                match targets.iter_mut().find(|(r, _)| r == rating) {
                    Some(entry) => entry.1 = target,
                    None => targets.push((rating.clone(), target)),
                }
            }
        }
        Ok(Routes { targets })
    }

    /// Where a feedback (JSON object text) goes and what is published, or
    /// `None` when its rating is routed nowhere.
    pub fn route(
        &self,
        tenant: &str,
        session_id: &str,
        feedback: &str,
        timestamp: &str,
        event_id: u64,
    ) -> Result<Option<Route>, String> {
        let feedback: Value =
            serde_json::from_str(feedback).map_err(|e| format!("feedback is not JSON: {e}"))?;
        let rating = match feedback.get("rating") {
            None | Some(Value::Null) => "none",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(format!("rating is not a string: {other}")),
        };
        let target = match self.targets.iter().find(|(r, _)| r == rating) {
            Some((_, Some(target))) => target.clone(),
            Some((_, None)) => return Ok(None),
            None => return Err(format!("no target configured for rating {rating:?}")),
        };
        let payload = json!({
            "session_id": session_id,
            "tenant": tenant,
            "feedback": feedback,
            "timestamp": timestamp,
            "event_id": event_id,
        });
        Ok(Some(Route {
            target,
            payload: payload.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(config: &str, feedback: &str) -> Result<Option<Route>, String> {
        Routes::from_config(config).unwrap().route(
            "acme",
            "s1",
            feedback,
            "2025-01-31T12:00:00Z",
            7,
        )
    }

    fn target(config: &str, feedback: &str) -> Option<String> {
        route(config, feedback).unwrap().map(|r| r.target)
    }

    #[test]
    fn default_targets() {
        assert_eq!(target("{}", r#"{"rating":"up"}"#).as_deref(), Some("good"));
        assert_eq!(target("{}", r#"{"rating":"down"}"#).as_deref(), Some("bad"));
        assert_eq!(
            target("{}", r#"{"rating":null}"#).as_deref(),
            Some("neutral")
        );
        assert_eq!(
            target("{}", r#"{"comment":"hi"}"#).as_deref(),
            Some("neutral")
        );
    }

    #[test]
    fn payload_shape() {
        let r = route("{}", r#"{"rating":"up","comment":"great","extra":{"k":1}}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.payload,
            r#"{"session_id":"s1","tenant":"acme","feedback":{"rating":"up","comment":"great","extra":{"k":1}},"timestamp":"2025-01-31T12:00:00Z","event_id":7}"#
        );
    }

    #[test]
    fn partial_override_and_disable() {
        let config = r#"{"targets":{"down":"alerts","none":null,"meh":"x"}}"#;
        assert_eq!(
            target(config, r#"{"rating":"up"}"#).as_deref(),
            Some("good")
        );
        assert_eq!(
            target(config, r#"{"rating":"down"}"#).as_deref(),
            Some("alerts")
        );
        assert_eq!(target(config, r#"{"rating":null}"#), None);
        assert_eq!(target(config, r#"{"rating":"meh"}"#).as_deref(), Some("x"));
    }

    #[test]
    fn unroutable() {
        assert!(route("{}", r#"{"rating":"sideways"}"#).is_err());
        assert!(route("{}", r#"{"rating":5}"#).is_err());
        assert!(route("{}", "nope").is_err());
    }

    #[test]
    fn bad_configs() {
        for bad in [
            "[]",
            r#"{"target":{}}"#,
            r#"{"targets":[]}"#,
            r#"{"targets":{"up":1}}"#,
            r#"{"targets":{"up":""}}"#,
        ] {
            assert!(Routes::from_config(bad).is_err(), "{bad}");
        }
    }
}
