//! How the shared store reaches Redis: one server or the master a set of sentinels names, over plain TCP
//! or TLS, authenticated with the configured user and password.
//!
//! Everything is done by the `redis` crate (its rustls TLS, its Sentinel client); this module only puts
//! the configuration into its terms, and reads the password file and the CA bundle again at each
//! connection, so that a rotated Secret is used from the next connection on without a restart. A
//! certificate that names another host than the one connected to (`redis_tls_server_name`) is checked
//! against that name by connecting to the name and resolving it to the configured host.
//!
//! Nothing here puts a credential in an error: the crate's errors name the server's answer (`WRONGPASS`,
//! `NOAUTH`), never what was sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::AsyncDNSResolver;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    TlsCertificates, TlsMode,
};

use crate::config::{RedisConfig, RedisTarget, Secret};

/// What a connection attempt may take at least (a TLS handshake, loading the system roots, asking the
/// sentinels and checking the master's `ROLE`); `redis_timeout_ms` when longer. A delivery waits for it
/// no longer than `redis_timeout_ms` (`RedisStore`).
pub const CONNECT_BUDGET: Duration = Duration::from_secs(2);

pub struct Connector {
    target: RedisTarget,
    tls: bool,
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    username: Option<String>,
    password: Option<Secret>,
    timeout: Duration,
    /// A connection to one sentinel, kept for asking which server is the master.
    sentinel: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Connector {
    pub fn new(config: &RedisConfig) -> Connector {
        Connector {
            target: config.target.clone(),
            tls: config.tls,
            ca_file: config.ca_file.clone(),
            server_name: config.tls_server_name.clone(),
            username: config.username.clone(),
            password: config.password.clone(),
            timeout: config.timeout,
            sentinel: tokio::sync::Mutex::new(None),
        }
    }

    /// The password as the Secret holds it now: a file is read again (a failed read keeps the one read
    /// at start-up, and the config reload reports the file).
    fn password(&self) -> Option<String> {
        let secret = self.password.as_ref()?;
        let fresh = secret
            .file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|t| t.trim_end_matches(['\n', '\r']).to_string())
            .filter(|t| !t.is_empty());
        Some(fresh.unwrap_or_else(|| String::from_utf8_lossy(&secret.key).into_owned()))
    }

    /// The CA bundle, read now; `None`: the system roots.
    fn certificates(&self) -> Result<TlsCertificates, String> {
        let root_cert = match &self.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read dedup.redis_ca_file {}: {}",
                    path.display(),
                    e.kind()
                )
            })?),
            None => None,
        };
        Ok(TlsCertificates {
            client_tls: None,
            root_cert,
        })
    }

    fn budget(&self) -> Duration {
        self.timeout.max(CONNECT_BUDGET)
    }

    pub fn sentinel(&self) -> bool {
        matches!(self.target, RedisTarget::Sentinel { .. })
    }

    /// Connects (for Sentinel: asks the sentinels for the master first) within the timeout; also returns
    /// where it connected.
    pub async fn connect(&self) -> Result<(MultiplexedConnection, ConnectionAddr), String> {
        match tokio::time::timeout(self.budget(), self.connect_now()).await {
            Ok(r) => r,
            Err(_) => Err("connection timed out".into()),
        }
    }

    /// The master's address as the sentinels name it now (`SENTINEL get-master-addr-by-name`, on a
    /// connection to the first sentinel that answers, kept); `None` without Sentinel, or if no sentinel
    /// answers within the timeout.
    pub async fn named_master(&self) -> Option<(String, u16)> {
        let RedisTarget::Sentinel {
            sentinels, master, ..
        } = &self.target
        else {
            return None;
        };
        let ask = async {
            let mut conn = self.sentinel.lock().await;
            if conn.is_none() {
                for (host, port) in sentinels {
                    if let Ok(c) = self.sentinel_conn(host, *port).await {
                        *conn = Some(c);
                        break;
                    }
                }
            }
            let c = conn.as_mut()?;
            let named: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async(c)
                .await;
            match named {
                Ok(named) => named,
                Err(_) => {
                    conn.take();
                    None
                }
            }
        };
        tokio::time::timeout(self.budget(), ask)
            .await
            .ok()
            .flatten()
    }

    async fn sentinel_conn(&self, host: &str, port: u16) -> Result<MultiplexedConnection, String> {
        let client = if self.tls {
            let addr = ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            };
            Client::build_with_tls(addr, self.certificates()?).map_err(|e| e.to_string())?
        } else {
            Client::open(ConnectionAddr::Tcp(host.to_string(), port)).map_err(|e| e.to_string())?
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())
    }

    async fn info(&self) -> Result<ConnectionInfo, String> {
        match &self.target {
            RedisTarget::Server { url } => self.server(url),
            RedisTarget::Sentinel {
                sentinels,
                master,
                db,
            } => self.master(sentinels, master, *db).await,
        }
    }

    async fn connect_now(&self) -> Result<(MultiplexedConnection, ConnectionAddr), String> {
        let info = self.info().await?;
        let at = info.addr().clone();
        // Each operation is bounded by the store's timeout; these bound the handshake.
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.budget()))
            .set_response_timeout(Some(self.budget()));
        let info = match (&self.server_name, info.addr().clone()) {
            (
                Some(name),
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure,
                    tls_params,
                },
            ) => {
                config = config.set_dns_resolver(Pinned {
                    name: name.clone(),
                    host,
                });
                info.set_addr(ConnectionAddr::TcpTls {
                    host: name.clone(),
                    port,
                    insecure,
                    tls_params,
                })
            }
            _ => info,
        };
        let client = Client::open(info).map_err(|e| e.to_string())?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        Ok((conn, at))
    }

    /// One server: the URL, with the credentials and the CA bundle.
    fn server(&self, url: &str) -> Result<ConnectionInfo, String> {
        let info = url
            .into_connection_info()
            .map_err(|_| "dedup.redis_url is not a Redis URL".to_string())?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = self.password() {
            settings = settings.set_password(password);
        }
        let info = info.set_redis_settings(settings);
        if !self.tls {
            return Ok(info);
        }
        let client =
            Client::build_with_tls(info, self.certificates()?).map_err(|e| e.to_string())?;
        Ok(client.get_connection_info().clone())
    }

    /// Asks the sentinels, in turn, which server is `master` now; the crate checks that it says so itself
    /// (`ROLE`) before it is used. The sentinels are asked without credentials, over TLS when the master
    /// is reached over TLS.
    async fn master(
        &self,
        sentinels: &[(String, u16)],
        master: &str,
        db: i64,
    ) -> Result<ConnectionInfo, String> {
        let addrs = sentinels.iter().map(|(host, port)| {
            if self.tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
            .map_err(|e| e.to_string())?
            .set_client_to_redis_db(db);
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = self.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if self.tls {
            let certs = self.certificates()?;
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_certificates(certs);
        }
        let mut sentinel = builder.build().map_err(|e| e.to_string())?;
        let client = sentinel
            .async_get_client()
            .await
            .map_err(|e| format!("asking the sentinels for {master}: {e}"))?;
        Ok(client.get_connection_info().clone())
    }
}

/// Resolves `name` (the name the certificate is checked against) to `host` (where the server is).
struct Pinned {
    name: String,
    host: String,
}

impl AsyncDNSResolver for Pinned {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let target = if host == self.name {
                self.host.as_str()
            } else {
                host
            };
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target, port)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}
