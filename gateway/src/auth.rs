//! Who is calling: the tenant a request acts for and what its role allows.
//!
//! Keys are sent as `Authorization: Bearer <key>` (the scheme name is
//! case-insensitive, RFC 9110 §11.1) and configured hashed (sha256 of the key)
//! in `gateway.toml`, each bound to a tenant and a role. `gateway key new
//! --tenant T --role R` makes one. A key never sees another tenant's sessions:
//! the store scopes every read and write by tenant, so a foreign session id
//! answers 404 exactly like a missing one. The `admin` role's `/v1/admin/*`
//! views and actions are scoped to its own tenant too; only the `operator`
//! role acts across tenants (reload plugins for everyone, every tenant's
//! outbox). A 401 carries `WWW-Authenticate: Bearer realm="session-gateway"`
//! (with `error="invalid_token"` when a key was sent but is not valid, RFC
//! 6750 §3).
//!
//! With `auth.mode = "none"` (local development only) every request acts for
//! the default tenant with the operator role, and the gateway says so loudly
//! at start-up.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use rand::Rng;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use crate::error::challenge;
use crate::error::{AppError, INVALID_KEY};
use crate::model::Tenant;

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `"keys"` (API keys required) or `"none"` (local development only).
    #[serde(default)]
    pub mode: AuthMode,
    /// The accepted keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// Whether requests must carry an API key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: everything acts for the default tenant as admin.
    #[default]
    None,
    /// Every request except health checks needs a configured key.
    Keys,
}

/// One `[[auth.keys]]` entry. The key itself is never stored, only its sha256.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A label for logs and metrics (not secret), e.g. `team-a-agents`.
    pub id: String,
    /// Tenant the key acts for.
    pub tenant: String,
    /// `agent`, `reader`, `admin` or `operator`.
    pub role: Role,
    /// sha256 (hex) of the key.
    pub sha256: String,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConfig")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl AuthConfig {
    /// Checks tenants, hashes and ids.
    ///
    /// # Errors
    /// A message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let mut ids = std::collections::BTreeSet::new();
        for k in &self.keys {
            if !ids.insert(&k.id) {
                return Err(format!("auth.keys: id {:?} is used twice", k.id));
            }
            validate_tenant(&k.tenant).map_err(|e| format!("auth.keys.{}: {e}", k.id))?;
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("auth.keys.{}: sha256 must be 64 hex digits", k.id));
            }
        }
        if self.mode == AuthMode::Keys && self.keys.is_empty() {
            return Err("auth.mode = \"keys\" needs at least one [[auth.keys]] entry".into());
        }
        Ok(())
    }
}

/// Checks a tenant name: 1–64 characters from `[a-z0-9_-]`.
///
/// # Errors
/// A message saying what is allowed.
pub fn validate_tenant(t: &str) -> Result<(), String> {
    if t.is_empty()
        || t.len() > 64
        || !t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "tenant {t:?} must be 1 to 64 characters from [a-z0-9_-]"
        ));
    }
    Ok(())
}

/// Hex sha256 of a key, as configured.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (`sgw_` + 43 base62 characters, ≈256 bits).
pub fn new_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..43)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sgw_{body}")
}

/// The configured keys, by hash.
pub struct Keys {
    mode: AuthMode,
    by_hash: HashMap<String, (String, Caller)>,
}

impl Keys {
    /// Indexes the configured keys.
    pub fn new(cfg: &AuthConfig) -> Self {
        let by_hash = cfg
            .keys
            .iter()
            .map(|k| {
                let caller = Caller {
                    tenant: Tenant(k.tenant.clone()),
                    role: k.role,
                };
                (k.sha256.to_ascii_lowercase(), (k.id.clone(), caller))
            })
            .collect();
        Self {
            mode: cfg.mode,
            by_hash,
        }
    }

    /// Whether keys are required.
    pub fn required(&self) -> bool {
        self.mode == AuthMode::Keys
    }

    /// Who a request is from: its key's id and caller.
    ///
    /// # Errors
    /// 401 without a valid key (when keys are required); 403 when the role
    /// does not allow the method or path.
    pub fn authenticate(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(String, Caller), AppError> {
        let (id, caller) = if self.mode == AuthMode::None {
            ("anonymous".to_owned(), Caller::anonymous())
        } else {
            let key = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .ok_or_else(|| AppError::Unauthorized(KEY_REQUIRED.into()))?;
            self.by_hash
                .get(&hash_key(key))
                .cloned()
                .ok_or_else(|| AppError::Unauthorized(INVALID_KEY.into()))?
        };
        if path.starts_with("/v1/admin") {
            caller.require_admin()?;
        } else if caller.role == Role::Reader
            && !matches!(*method, Method::GET | Method::HEAD)
            // batch-get is a read that takes its ids in a body.
            && path != "/v1/sessions/batch-get"
        {
            caller.require_write()?;
        }
        Ok((id, caller))
    }
}

/// The 401 message when no bearer key was sent.
const KEY_REQUIRED: &str = "an API key is required: Authorization: Bearer <key>";

/// The key of an `Authorization: Bearer <key>` header value. The scheme name
/// is matched case-insensitively (RFC 9110 §11.1) and may be followed by any
/// run of spaces; `None` for another scheme or an empty key.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let key = rest.trim();
    (!key.is_empty()).then_some(key)
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Session API, read and write.
    Agent,
    /// Session API, GET only.
    Reader,
    /// Session API and `/v1/admin/*`, scoped to the key's tenant: its own
    /// outbox items and quarantines; no plugin reload.
    Admin,
    /// Everything `admin` may, across tenants: plugin reload (for everyone),
    /// every tenant's outbox, process-wide plugin and dispatcher counters.
    Operator,
}

/// The caller of a request: set by the auth layer as a request extension.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant whose sessions the request may see.
    pub tenant: Tenant,
    /// What the caller may do.
    pub role: Role,
}

impl Caller {
    /// The caller when authentication is off (local development): the
    /// default tenant with the operator role.
    pub fn anonymous() -> Self {
        Self {
            tenant: Tenant::default_tenant(),
            role: Role::Operator,
        }
    }

    /// Whether the caller may act across tenants (`operator`).
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// Refuses read-only callers.
    ///
    /// # Errors
    /// 403 for the `reader` role.
    pub fn require_write(&self) -> Result<(), AppError> {
        if self.role == Role::Reader {
            return Err(AppError::Forbidden(
                "this key has the reader role: it may only read".into(),
            ));
        }
        Ok(())
    }

    /// Refuses callers that are neither `admin` nor `operator`.
    ///
    /// # Errors
    /// 403 unless the role is `admin` or `operator`.
    pub fn require_admin(&self) -> Result<(), AppError> {
        if !matches!(self.role, Role::Admin | Role::Operator) {
            return Err(AppError::Forbidden(
                "this endpoint needs a key with the admin role".into(),
            ));
        }
        Ok(())
    }

    /// Refuses callers without the `operator` role (cross-tenant operations).
    ///
    /// # Errors
    /// 403 unless the role is `operator`, saying what the action affects.
    pub fn require_operator(&self, what: &str) -> Result<(), AppError> {
        if self.role != Role::Operator {
            return Err(AppError::Forbidden(format!(
                "{what} affects every tenant: it needs a key with the operator role"
            )));
        }
        Ok(())
    }

    /// The tenant an admin view is limited to: the caller's own, or for an
    /// operator the one asked for (`None`: every tenant).
    ///
    /// # Errors
    /// 403 when a non-operator asks for another tenant; 400 for a bad name.
    pub fn admin_scope<'a>(&'a self, asked: Option<&'a str>) -> Result<Option<&'a str>, AppError> {
        if let Some(t) = asked {
            validate_tenant(t).map_err(|m| AppError::bad_request("invalid_query", m))?;
        }
        match (self.is_operator(), asked) {
            (true, asked) => Ok(asked),
            (false, Some(t)) if t != self.tenant.as_str() => Err(AppError::Forbidden(
                "an admin key sees its own tenant only; other tenants need the operator role"
                    .into(),
            )),
            (false, _) => Ok(Some(self.tenant.as_str())),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Keys, String, String) {
        let (a, r) = (new_key(), new_key());
        let cfg = AuthConfig {
            mode: AuthMode::Keys,
            keys: vec![
                KeyConfig {
                    id: "a".into(),
                    tenant: "team-a".into(),
                    role: Role::Agent,
                    sha256: hash_key(&a),
                },
                KeyConfig {
                    id: "r".into(),
                    tenant: "team-a".into(),
                    role: Role::Reader,
                    sha256: hash_key(&r),
                },
            ],
        };
        cfg.validate().unwrap();
        (Keys::new(&cfg), a, r)
    }

    fn bearer(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {k}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn keys_roles_and_tenants() {
        let (keys, agent, reader) = keys();
        let (id, c) = keys
            .authenticate(&Method::POST, "/v1/sessions", &bearer(&agent))
            .unwrap();
        assert_eq!(
            (id.as_str(), c.tenant.as_str(), c.role),
            ("a", "team-a", Role::Agent)
        );
        assert!(matches!(
            keys.authenticate(&Method::GET, "/v1/sessions", &HeaderMap::new()),
            Err(AppError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.authenticate(&Method::GET, "/v1/sessions", &bearer("sgw_nope")),
            Err(AppError::Unauthorized(_))
        ));
        assert!(
            keys.authenticate(&Method::GET, "/v1/sessions/x", &bearer(&reader))
                .is_ok()
        );
        assert!(matches!(
            keys.authenticate(&Method::PATCH, "/v1/sessions/x/metadata", &bearer(&reader)),
            Err(AppError::Forbidden(_))
        ));
        assert!(matches!(
            keys.authenticate(&Method::GET, "/v1/admin/plugins", &bearer(&agent)),
            Err(AppError::Forbidden(_))
        ));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k1"), Some("k1"));
        assert_eq!(bearer_token("bearer k1"), Some("k1"));
        assert_eq!(bearer_token("BEARER   k1 "), Some("k1"));
        assert_eq!(bearer_token("bEaReR\tk1"), Some("k1"));
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerk1"), None);
    }

    #[test]
    fn new_keys_are_distinct_and_long() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 47);
        assert_eq!(hash_key(&a).len(), 64);
    }
}
