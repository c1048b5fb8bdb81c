//! A Pitchpoint delivery as the sender writes it: the canonical headers, an HMAC signature over the body,
//! and the bytes on the wire, which a test may bend (drop, repeat or re-sign a header, chunk the body).

use super::SECRET;
use super::http::{header, with_body};

/// A Pitchpoint delivery, signed unless told otherwise.
#[derive(Clone)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Delivery {
    pub fn new(body: impl Into<Vec<u8>>) -> Delivery {
        Delivery {
            method: "POST".into(),
            path: "/webhooks".into(),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("X-Pps-Topic".into(), "orders/placed".into()),
                ("X-Pps-Sub-Topic".into(), "product:adv/adv-120".into()),
                ("X-Pps-Tenant-Id".into(), "OU1243".into()),
                ("X-Pps-Webhook-Id".into(), uuid::Uuid::new_v4().to_string()),
                (
                    "X-Pps-Triggered-At".into(),
                    "2024-01-1T10:00:00.7777748Z".into(),
                ),
            ],
            body: body.into(),
            chunked: false,
        }
        .sign_with(SECRET)
    }

    pub fn json() -> Delivery {
        Delivery::new(r#"{"order":{"id":1001,"total":"12.50"}}"#)
    }

    pub fn id(&self) -> String {
        self.header("X-Pps-Webhook-Id").unwrap().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Replaces every header `name` with `value` (`None` removes it).
    pub fn set(mut self, name: &str, value: Option<&str>) -> Delivery {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            self.headers.push((name.into(), v.into()));
        }
        self
    }

    /// Adds another `name` header, keeping the existing ones.
    pub fn add(mut self, name: &str, value: &str) -> Delivery {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn sign_with(self, secret: &str) -> Delivery {
        let sig = pps_sidecar::auth::hmac::sign(secret.as_bytes(), &self.body);
        self.set("X-Pps-Hmac-Sha256", Some(&sig))
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: sidecar.test\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        with_body(out.into_bytes(), &self.body, self.chunked)
    }
}
