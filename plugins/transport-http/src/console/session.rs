//! Operator sessions of the console: a random id in an HttpOnly, SameSite=Strict cookie
//! (Secure under TLS), a CSRF token per session that every form carries, idle expiry.

use axum::http::{HeaderMap, header};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "bitnet_session";
/// Name of the cookie that carries the login form's CSRF token before a session exists.
pub const LOGIN_COOKIE: &str = "bitnet_login";
/// Most sessions held at once; past it, the least recently used is dropped.
const MAX_SESSIONS: usize = 10_000;

/// A logged-in operator, as a handler sees it.
#[derive(Debug, Clone)]
pub struct SessionView {
    /// The session id (the cookie's value).
    pub id: String,
    /// Operator name.
    pub operator: String,
    /// The token every form of this session must send back.
    pub csrf: String,
}

struct Session {
    operator: String,
    csrf: String,
    last_used: Instant,
}

/// The sessions of one server.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value for the console: HttpOnly, SameSite=Strict, path `/admin`, Secure
/// when served over TLS; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/admin; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

impl Sessions {
    /// Sessions that expire after `idle` without a request.
    pub fn new(idle: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), idle }
    }

    /// Opens a session for `operator`; returns it.
    pub fn open(&self, operator: &str) -> SessionView {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_used) < self.idle);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) =
                map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let view = SessionView {
            id: random_token(),
            operator: operator.to_string(),
            csrf: random_token(),
        };
        map.insert(
            view.id.clone(),
            Session { operator: view.operator.clone(), csrf: view.csrf.clone(), last_used: now },
        );
        view
    }

    /// The live session `id`, refreshed; `None` when unknown or idle too long (then dropped).
    pub fn touch(&self, id: &str) -> Option<SessionView> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let s = map.get_mut(id)?;
        if now.duration_since(s.last_used) >= self.idle {
            map.remove(id);
            return None;
        }
        s.last_used = now;
        Some(SessionView { id: id.to_string(), operator: s.operator.clone(), csrf: s.csrf.clone() })
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Ends every session of `operator` (removed from the operators file).
    pub fn close_operator(&self, operator: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, s| s.operator != operator);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_expire_when_idle_and_close() {
        let s = Sessions::new(Duration::from_millis(50));
        let a = s.open("alice");
        assert_eq!(s.touch(&a.id).map(|v| v.csrf), Some(a.csrf.clone()));
        assert!(s.touch("nope").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.touch(&a.id).is_none(), "idle too long");
        let b = s.open("bob");
        s.close(&b.id);
        assert!(s.touch(&b.id).is_none(), "closed");
        let c = s.open("carol");
        s.close_operator("carol");
        assert!(s.touch(&c.id).is_none());
    }

    #[test]
    fn cookies_parse_and_carry_their_attributes() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; bitnet_session=xyz"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(SESSION_COOKIE, "v", true, None);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie(SESSION_COOKIE, "v", false, Some(0)).contains("Secure"));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
    }
}
