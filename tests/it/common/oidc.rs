//! A real OpenID Connect issuer on loopback: discovery document and JWKS over HTTP, RSA keys made here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::http::{answer, read_headers};

pub struct TestKey {
    pub kid: String,
    pair: KeyPair,
}

impl TestKey {
    pub fn generate(kid: &str) -> TestKey {
        TestKey {
            kid: kid.into(),
            pair: KeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }

    pub fn jwk(&self) -> Value {
        let c = PublicKeyComponents::<Vec<u8>>::from(self.pair.public_key());
        json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                "n": B64.encode(&c.n), "e": B64.encode(&c.e) })
    }

    /// The public key as bytes, what a key-confusion attack uses as an HMAC secret.
    pub fn public_bytes(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// An RS256 token over `claims` with this key's `kid`.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with_header(
            &json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid }),
            claims,
        )
    }

    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let signing_input = signing_input(header, claims);
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{signing_input}.{}", B64.encode(sig))
    }
}

/// A token with an arbitrary header and an HMAC-SHA256 signature under `secret`.
pub fn hs256_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = signing_input(header, claims);
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        B64.encode(mac.finalize().into_bytes())
    )
}

/// What a JWT's signature covers: the encoded header and claims.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// The JWKS document that publishes `keys`.
fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct State {
    jwks: Mutex<Value>,
    fetches: AtomicUsize,
    issuer: String,
}

/// Serves `<issuer>/.well-known/openid-configuration` and `<issuer>/jwks`, Firebase-style: the issuer
/// URL has the project as its path.
pub struct TestIssuer {
    pub addr: SocketAddr,
    /// The `iss` of its tokens: `http://127.0.0.1:PORT/<project>`.
    pub issuer: String,
    pub project: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    pub async fn start(project: &str, keys: &[&TestKey]) -> TestIssuer {
        Self::start_on("127.0.0.1:0".parse().unwrap(), project, keys).await
    }

    pub async fn start_on(addr: SocketAddr, project: &str, keys: &[&TestKey]) -> TestIssuer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}/{project}");
        let state = Arc::new(State {
            jwks: Mutex::new(jwks(keys)),
            fetches: AtomicUsize::new(0),
            issuer: issuer.clone(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let _ = read_headers(&mut reader).await;
                    let (status, body) = if path.ends_with("/.well-known/openid-configuration") {
                        let doc = json!({ "issuer": st.issuer, "jwks_uri": format!("{}/jwks", st.issuer) });
                        (200, doc.to_string())
                    } else if path.ends_with("/jwks") {
                        st.fetches.fetch_add(1, Ordering::SeqCst);
                        (200, st.jwks.lock().unwrap().to_string())
                    } else {
                        (404, "{}".to_string())
                    };
                    let resp = answer(status, "application/json", "Connection: close\r\n", &body);
                    let _ = reader.get_mut().write_all(&resp).await;
                });
            }
        });
        TestIssuer {
            addr,
            issuer,
            project: project.into(),
            state,
            task,
        }
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.jwks.lock().unwrap() = jwks(keys);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Valid claims for this issuer and its project as audience.
    pub fn claims(&self) -> Value {
        let t = now();
        json!({ "iss": self.issuer, "aud": self.project, "sub": "pitchpoint-webhooks",
                "iat": t, "exp": t + 3600, "auth_time": t })
    }

    /// Stops listening: connections are refused from now on.
    pub fn stop(self) {
        self.task.abort();
    }

    /// The `[auth.jwt]` TOML that trusts this issuer.
    pub fn toml(&self, methods: &str) -> String {
        trust_toml(&self.issuer, &self.project, methods)
    }
}

/// The `[auth]` TOML with `methods` that trusts `issuer` for tokens meant for `audience`; it need not be up.
pub fn trust_toml(issuer: &str, audience: &str, methods: &str) -> String {
    format!(
        "[auth]\nmethods = {methods}\n\n[[auth.jwt.issuers]]\nissuer = \"{issuer}\"\naudiences = [\"{audience}\"]\n"
    )
}
