//! Who may do what, on the HTTP side: the caller's identity (nobody, a Basic
//! login, or a Bearer token), the scopes the request needs, the 401 / 403
//! answers with their challenges, the built-in token endpoint, and the
//! per-client rate limit. The decisions themselves are `berth_auth`'s.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use berth_auth::acl::{Acl, Identity};
use berth_auth::htpasswd::Htpasswd;
use berth_auth::pool::WorkerPool;
use berth_auth::ratelimit::{RateLimit, RateLimiter};
use berth_auth::scope::{self, Actions, Endpoint, Scope};
use berth_auth::throttle::{LoginThrottle, ThrottlePolicy};
use berth_auth::token::{
    basic_challenge, bearer_challenge, parse_authorization, Credentials, TokenIssuer,
    TokenVerifier, VerifiedToken,
};
use berth_auth::Outcome;
use sha2::{Digest as _, Sha256};

use crate::error::{Code, RegistryError};
use crate::route::Route;

/// How clients authenticate.
pub enum Scheme {
    /// Basic credentials on every request, checked against the htpasswd file.
    Basic,
    /// Bearer tokens (Docker's token flow). With `issuer`, Berth runs the
    /// token endpoint itself (`/token`); without, tokens come from an external
    /// service that the verifier trusts.
    Token {
        issuer: Option<Box<TokenIssuer>>,
        verifier: Box<TokenVerifier>,
    },
}

/// Everything access control needs, built once by the server from its config.
pub struct AccessOptions {
    pub scheme: Scheme,
    /// Accounts for Basic logins and for the built-in token endpoint.
    pub htpasswd: Option<PathBuf>,
    pub rules: Acl,
    /// The token endpoint's URL for challenges. When set it is used as is,
    /// whatever `Host` a client sends; only when unset is it `/token` on the
    /// host the client asked (`Host`), with the scheme the server speaks.
    pub realm: Option<String>,
    /// The `service` of challenges and the audience of tokens.
    pub service: String,
    /// Whether the server speaks HTTPS (for the default realm).
    pub tls: bool,
    /// Wrong passwords in a row, per account and per client address, before
    /// logins from there are backed off (default 5; 0 turns it off).
    pub login_failures_before_backoff: Option<u32>,
}

/// Live access control of a server.
pub struct Access {
    scheme: Scheme,
    rules: Acl,
    realm: Option<String>,
    service: String,
    tls: bool,
    accounts: Option<Accounts>,
    /// Tokens already verified, by SHA-256: a signature check costs ~0.3 ms,
    /// and a client sends the same token with every request of a push or pull.
    verified_tokens: Mutex<HashMap<[u8; 32], VerifiedToken>>,
}

/// The htpasswd file, re-read when it changes, with a short-lived cache of
/// verified logins: bcrypt costs tens of milliseconds by design, and Docker
/// sends the password again with every token request.
struct Accounts {
    path: PathBuf,
    state: RwLock<AccountsState>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Where bcrypt runs: a few threads of its own with a short queue. On
    /// tokio's shared blocking pool, 600 concurrent wrong passwords took
    /// hundreds of threads and made a manifest HEAD wait 12 s.
    pool: WorkerPool,
    /// Shared with the check jobs, which count their own result: a client
    /// that hangs up before the answer still pays for its guess.
    throttles: Arc<Mutex<Throttles>>,
    /// What the verified-login lifetime and the file's re-read interval are
    /// measured with: tests move it by hand instead of waiting minutes.
    clock: Clock,
}

/// The real clock, or a test's, which moves only when told.
#[derive(Clone, Default)]
struct Clock(Option<Arc<Mutex<Instant>>>);

impl Clock {
    fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(now) => *now.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// How long since `then` (zero if `then` is later).
    fn since(&self, then: Instant) -> Duration {
        self.now().saturating_duration_since(then)
    }
}

/// Backoff after failed logins, per account and per client address.
struct Throttles {
    /// Accounts of the htpasswd file.
    accounts: LoginThrottle<String>,
    /// Names that are not accounts, in a table of their own: a flood of
    /// made-up names must not evict the real accounts' entries. Tracked at
    /// all so that backoff looks the same whether a name exists or not.
    unknown_names: LoginThrottle<String>,
    /// Client addresses (IPv6 by /64: one host usually holds a whole /64).
    addresses: LoginThrottle<IpAddr>,
}

impl Throttles {
    fn names(&mut self, known: bool) -> &mut LoginThrottle<String> {
        if known {
            &mut self.accounts
        } else {
            &mut self.unknown_names
        }
    }

    /// Count a checked login for the backoff, and log each lockout once.
    fn record(&mut self, name: &str, known: bool, address: Option<IpAddr>, ok: bool) {
        if ok {
            self.names(known).record_success(name);
            if let Some(address) = address {
                self.addresses.record_success(&address);
            }
            return;
        }
        let now = Instant::now();
        if let Some(backoff) = self.names(known).record_failure(name, now) {
            let client = address.map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(user = ?name, client, backoff_secs = backoff.as_secs(), "too many failed logins for account; backing off");
        }
        if let Some(address) = address {
            if let Some(backoff) = self.addresses.record_failure(&address, now) {
                tracing::warn!(client = %address, user = ?name, backoff_secs = backoff.as_secs(), "too many failed logins from address; backing off");
            }
        }
    }
}

/// The result of a login.
pub(crate) enum Login {
    Ok,
    Wrong,
    /// Refused without checking the password: 429, retry after this long.
    Refused {
        retry_after: Duration,
        reason: &'static str,
    },
}

/// Password checks waiting per check thread before more are refused with
/// 429: short, so a login never waits behind a long queue of guesses (four
/// cost-10 checks are ~0.3 s).
const PASSWORD_QUEUE_PER_THREAD: usize = 4;
/// `Retry-After` when the check queue is full.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

struct AccountsState {
    file: Arc<Htpasswd>,
    modified: Option<SystemTime>,
    checked: Instant,
    generation: u64,
}

const ACCOUNTS_RECHECK: Duration = Duration::from_secs(2);
const VERIFIED_LOGIN_TTL: Duration = Duration::from_secs(300);
const VERIFIED_LOGIN_MAX: usize = 4096;
const VERIFIED_TOKENS_MAX: usize = 16384;

impl Accounts {
    fn open(
        path: PathBuf,
        failures_before_backoff: Option<u32>,
        clock: Clock,
    ) -> Result<Accounts, String> {
        let (file, modified) = read_htpasswd(&path)?;
        // One check per core at most: bcrypt is pure CPU, so more threads
        // would only take cores from the requests being served.
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let queue = threads * PASSWORD_QUEUE_PER_THREAD;
        let pool = WorkerPool::new("berth-bcrypt", threads, queue)
            .map_err(|e| format!("cannot start the password-check threads: {e}"))?;
        let policy = ThrottlePolicy {
            free_failures: failures_before_backoff
                .unwrap_or(berth_auth::throttle::DEFAULT_FREE_FAILURES),
            ..ThrottlePolicy::default()
        };
        tracing::info!(
            threads,
            queue,
            failures_before_backoff = policy.free_failures,
            "password checks"
        );
        Ok(Accounts {
            path,
            state: RwLock::new(AccountsState {
                file: Arc::new(file),
                modified,
                checked: clock.now(),
                generation: 0,
            }),
            verified: Mutex::new(HashMap::new()),
            pool,
            throttles: Arc::new(Mutex::new(Throttles {
                accounts: LoginThrottle::new(policy),
                unknown_names: LoginThrottle::new(policy),
                addresses: LoginThrottle::new(ThrottlePolicy {
                    max_entries: 100_000,
                    ..policy
                }),
            })),
            clock,
        })
    }

    /// The current file, re-read first if it changed on disk (checked at most
    /// every few seconds). A file that no longer parses keeps the old one.
    fn current(&self) -> (Arc<Htpasswd>, u64) {
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if self.clock.since(state.checked) < ACCOUNTS_RECHECK {
                return (state.file.clone(), state.generation);
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if self.clock.since(state.checked) >= ACCOUNTS_RECHECK {
            state.checked = self.clock.now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != state.modified {
                match read_htpasswd(&self.path) {
                    Ok((mut file, modified)) => {
                        file.share_bcrypt_count(&state.file);
                        tracing::info!(path = %self.path.display(), users = file.len(), "htpasswd file reloaded");
                        state.file = Arc::new(file);
                        state.modified = modified;
                        state.generation += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "htpasswd file changed but cannot be used; keeping the previous accounts");
                        state.modified = modified;
                    }
                }
            }
        }
        (state.file.clone(), state.generation)
    }

    /// Check a password: bcrypt on the check pool, unless this exact login
    /// was verified in the last minutes against the same file. A backed-off
    /// account or address, or a full check queue, is refused without bcrypt.
    async fn verify(&self, user: &str, password: &str, client: Option<SocketAddr>) -> Login {
        let (file, generation) = self.current();
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(generation.to_be_bytes());
            h.update(user.as_bytes());
            h.update([0]);
            h.update(password.as_bytes());
            h.finalize().into()
        };
        {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            // Before the backoff: only someone who knows the password can
            // hit this, so a guesser who locked an account out does not lock
            // out its owner's running pushes.
            if verified
                .get(&key)
                .is_some_and(|at| self.clock.since(*at) < VERIFIED_LOGIN_TTL)
            {
                return Login::Ok;
            }
        }
        let known = file.contains(user);
        // Without connect info every client would share one address entry,
        // and one guesser would lock everyone out: skip the address then.
        let address = client.map(|c| address_key(c.ip()));
        {
            let throttles = self.throttles.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let names = if known {
                &throttles.accounts
            } else {
                &throttles.unknown_names
            };
            let wait = names
                .check(user, now)
                .max(address.and_then(|a| throttles.addresses.check(&a, now)));
            if let Some(retry_after) = wait {
                tracing::debug!(user = ?user, client = %client_ip(client), "login refused: backing off");
                return Login::Refused {
                    retry_after,
                    reason: "too many failed logins",
                };
            }
        }
        let (sender, result) = tokio::sync::oneshot::channel();
        let password_owned = password.to_string();
        let name_owned = user.to_string();
        let throttles = self.throttles.clone();
        let job = move || {
            let ok = file.verify(&name_owned, &password_owned);
            throttles.lock().unwrap_or_else(|e| e.into_inner()).record(
                &name_owned,
                known,
                address,
                ok,
            );
            let _ = sender.send(ok);
        };
        if self.pool.try_run(job).is_err() {
            tracing::debug!(client = %client_ip(client), "login refused: the password-check queue is full");
            return Login::Refused {
                retry_after: BUSY_RETRY_AFTER,
                reason: "too many logins are being checked",
            };
        }
        let ok = result.await.unwrap_or(false);
        if ok {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= VERIFIED_LOGIN_MAX {
                verified.retain(|_, at| self.clock.since(*at) < VERIFIED_LOGIN_TTL);
                if verified.len() >= VERIFIED_LOGIN_MAX {
                    verified.clear();
                }
            }
            verified.insert(key, self.clock.now());
            Login::Ok
        } else {
            Login::Wrong
        }
    }
}

/// The throttle's key for a client address: IPv4 as is (also when mapped
/// into IPv6), IPv6 by its /64, which one host or site usually holds whole.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// 429 `TOOMANYREQUESTS` with `Retry-After` in whole seconds (rounded up).
fn too_many(retry_after: Duration, reason: &str) -> RegistryError {
    let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
    RegistryError::new(
        StatusCode::TOO_MANY_REQUESTS,
        Code::TooManyRequests,
        format!("{reason}: retry after {secs} s"),
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
}

fn read_htpasswd(path: &PathBuf) -> Result<(Htpasswd, Option<SystemTime>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read htpasswd file {}: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let file =
        Htpasswd::parse(&text).map_err(|e| format!("htpasswd file {}: {e}", path.display()))?;
    Ok((file, modified))
}

/// The caller of an allowed request.
pub(crate) struct Caller {
    pub identity: Identity,
    /// What a Bearer token carried (None for Basic and anonymous callers,
    /// whose rights are the rules').
    token_access: Option<Vec<Scope>>,
}

impl Access {
    pub fn new(options: AccessOptions) -> Result<Access, String> {
        let accounts = options
            .htpasswd
            .map(|path| {
                Accounts::open(
                    path,
                    options.login_failures_before_backoff,
                    Clock::default(),
                )
            })
            .transpose()?;
        let needs_accounts = match &options.scheme {
            Scheme::Basic => true,
            Scheme::Token { issuer, .. } => issuer.is_some(),
        };
        if needs_accounts && accounts.is_none() {
            return Err(
                "Basic auth and the built-in token service need an htpasswd file (auth.htpasswd)"
                    .into(),
            );
        }
        if let Some(accounts) = &accounts {
            let (file, _) = accounts.current();
            for warning in options.rules.warnings(&file.users()) {
                tracing::warn!("access rules: {warning}");
            }
        }
        Ok(Access {
            scheme: options.scheme,
            rules: options.rules,
            realm: options.realm,
            service: options.service,
            tls: options.tls,
            accounts,
            verified_tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Whether this server runs the token endpoint.
    pub fn issues_tokens(&self) -> bool {
        matches!(
            self.scheme,
            Scheme::Token {
                issuer: Some(_),
                ..
            }
        )
    }

    /// Authenticate and authorise one API request. `Err` is the answer to
    /// send (401 with a challenge, or 403).
    pub(crate) async fn check(
        &self,
        method: &str,
        route: &Route<'_>,
        mount_from: Option<&str>,
        headers: &HeaderMap,
        client: Option<SocketAddr>,
    ) -> Result<Caller, RegistryError> {
        let endpoint = endpoint_of(route, mount_from);
        // Methods the endpoint does not serve get their 405 from the handler.
        let required = scope::required_scopes(method, &endpoint).unwrap_or_default();
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let (identity, granted, token_access) = match authorization {
            None => {
                if endpoint == Endpoint::Base {
                    // How `docker login` finds out where to log in.
                    return Err(self.challenge(headers, &[], false, "authentication required"));
                }
                let granted = self.rules.grant(&Identity::Anonymous, &required);
                (Identity::Anonymous, granted, None)
            }
            Some(value) => match parse_authorization(value) {
                Ok(Credentials::Basic { user, password }) => {
                    if let Scheme::Token { .. } = self.scheme {
                        // With tokens, passwords are checked at /token only:
                        // one place to guess them, throttled there. Clients
                        // that follow the Bearer challenge never send Basic here.
                        return Err(self.challenge(
                            headers,
                            &required,
                            false,
                            "this registry takes Bearer tokens: get one from the realm of the challenge",
                        ));
                    }
                    match self.login(&user, password.expose(), client).await {
                        Login::Ok => {}
                        Login::Wrong => {
                            return Err(self.challenge(
                                headers,
                                &required,
                                false,
                                "wrong user name or password",
                            ))
                        }
                        Login::Refused {
                            retry_after,
                            reason,
                        } => return Err(too_many(retry_after, reason)),
                    }
                    let identity = Identity::User(user);
                    let granted = self.rules.grant(&identity, &required);
                    (identity, granted, None)
                }
                Ok(Credentials::Bearer(token)) => {
                    let Scheme::Token { verifier, .. } = &self.scheme else {
                        return Err(self.challenge(
                            headers,
                            &required,
                            false,
                            "this registry takes Basic credentials, not tokens",
                        ));
                    };
                    match self.verify_token(verifier, token.expose()) {
                        Ok(verified) => {
                            let identity = verified.identity();
                            (identity, verified.access.clone(), Some(verified.access))
                        }
                        Err(e) => {
                            tracing::info!(client = %client_ip(client), error = %e, "rejected token");
                            return Err(self.challenge(
                                headers,
                                &required,
                                false,
                                &format!("{e}: log in again"),
                            ));
                        }
                    }
                }
                Err(e) => {
                    return Err(self.challenge(
                        headers,
                        &required,
                        false,
                        &format!("unreadable Authorization header: {e}"),
                    ))
                }
            },
        };
        // With our own token service, the rules say whether a new token could
        // do better; an external issuer decides for itself.
        let grantable = match &self.scheme {
            Scheme::Token { issuer: None, .. } if token_access.is_some() => None,
            _ => Some(self.rules.grant(&identity, &required)),
        };
        match berth_auth::decide(&identity, &required, &granted, grantable.as_deref()) {
            Outcome::Allowed => Ok(Caller {
                identity,
                token_access,
            }),
            // Challenges name every scope the request needs, not just the
            // missing ones: clients fetch one token with exactly these.
            Outcome::Unauthorized { .. } => {
                Err(self.challenge(headers, &required, false, "authentication required"))
            }
            Outcome::InsufficientScope { .. } => Err(self.challenge(
                headers,
                &required,
                true,
                "the token does not allow this request",
            )),
            Outcome::Denied { missing } => Err(RegistryError::new(
                StatusCode::FORBIDDEN,
                Code::Denied,
                format!(
                    "{} may not {}",
                    match &identity {
                        Identity::Anonymous => "an anonymous client",
                        Identity::User(name) => name.as_str(),
                    },
                    describe_missing(&missing, &granted)
                ),
            )),
        }
    }

    /// Verify a token, or find it among those verified before. A cached token
    /// still expires on time: its `exp` is checked on every use.
    fn verify_token(
        &self,
        verifier: &TokenVerifier,
        token: &str,
    ) -> Result<VerifiedToken, berth_auth::token::TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = SystemTime::now();
        let now_secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        {
            let cache = self
                .verified_tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(verified) = cache.get(&key) {
                if verified.expires_at > now_secs {
                    return Ok(verified.clone());
                }
            }
        }
        let verified = verifier.verify(token, now)?;
        let mut cache = self
            .verified_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_TOKENS_MAX {
            cache.retain(|_, v| v.expires_at > now_secs);
            if cache.len() >= VERIFIED_TOKENS_MAX {
                cache.clear();
            }
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }

    /// Whether `caller` may see `repository` in the catalog.
    pub(crate) fn can_see(&self, caller: &Caller, repository: &str) -> bool {
        match &caller.token_access {
            Some(access) if matches!(self.scheme, Scheme::Token { issuer: None, .. }) => access
                .iter()
                .any(|s| s.is_image_repository() && s.name == repository),
            _ => self.rules.can_see_repository(&caller.identity, repository),
        }
    }

    /// What `identity` may do on `repository` by the rules: the web UI
    /// shows and offers exactly this, as the API would grant it.
    pub(crate) fn rule_actions(&self, identity: &Identity, repository: &str) -> Actions {
        self.rules.allowed(identity, repository)
    }

    /// Whether there is an htpasswd file to log in with.
    pub(crate) fn has_accounts(&self) -> bool {
        self.accounts.is_some()
    }

    /// A login from the web UI's form: the same accounts, cache and backoff as the API.
    pub(crate) async fn ui_login(
        &self,
        user: &str,
        password: &str,
        client: Option<SocketAddr>,
    ) -> Login {
        self.login(user, password, client).await
    }

    async fn login(&self, user: &str, password: &str, client: Option<SocketAddr>) -> Login {
        let login = match &self.accounts {
            Some(accounts) => accounts.verify(user, password, client).await,
            None => Login::Wrong,
        };
        if let Login::Wrong = login {
            // The user name as the client sent it (escaped), never the password.
            tracing::warn!(client = %client_ip(client), user = ?user, "failed login");
        }
        login
    }

    /// A login at the token endpoint, as its error when it fails.
    async fn token_login(
        &self,
        user: &str,
        password: &str,
        client: Option<SocketAddr>,
    ) -> Result<(), TokenEndpointError> {
        match self.login(user, password, client).await {
            Login::Ok => Ok(()),
            Login::Wrong => Err(TokenEndpointError::Unauthorized(basic_challenge(
                &self.service,
            ))),
            Login::Refused {
                retry_after,
                reason,
            } => Err(TokenEndpointError::TooMany(too_many(retry_after, reason))),
        }
    }

    /// The token endpoint's URL for challenges. A configured realm wins:
    /// `Host` is the client's to choose, and a realm built from it would
    /// send credentials wherever the request said (behind a proxy that
    /// passes `Host` through, to any host name). Only without one is the
    /// realm built from `Host` (sanitised), which suits a registry reached
    /// under one name, and is what README says.
    fn realm(&self, headers: &HeaderMap) -> String {
        if let Some(realm) = &self.realm {
            return realm.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or("localhost");
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}/token")
    }

    /// 401 `UNAUTHORIZED` with the challenge that tells the client how to log in.
    fn challenge(
        &self,
        headers: &HeaderMap,
        scopes: &[Scope],
        insufficient_scope: bool,
        message: &str,
    ) -> RegistryError {
        let value = match self.scheme {
            Scheme::Basic => basic_challenge(&self.service),
            Scheme::Token { .. } => bearer_challenge(
                &self.realm(headers),
                &self.service,
                scopes,
                insufficient_scope,
            ),
        };
        let error = RegistryError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, message);
        match HeaderValue::from_str(&value) {
            Ok(v) => error.with_header(header::WWW_AUTHENTICATE, v),
            Err(_) => error,
        }
    }

    /// The token endpoint: `GET /token?service=..&scope=..` with optional
    /// Basic credentials, or `POST /token` with an OAuth2 password grant.
    pub(crate) async fn token(
        &self,
        query: Option<&str>,
        form: Option<&str>,
        headers: &HeaderMap,
        client: Option<SocketAddr>,
    ) -> Result<String, TokenEndpointError> {
        let Scheme::Token {
            issuer: Some(issuer),
            ..
        } = &self.scheme
        else {
            return Err(TokenEndpointError::NotFound);
        };
        let bad = |e: String| TokenEndpointError::BadRequest(e);
        let (service, scopes, identity) = match form {
            None => {
                let request = berth_auth::token::TokenRequest::parse_query(query.unwrap_or(""))
                    .map_err(|e| bad(e.to_string()))?;
                let authorization = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                let identity = match authorization.map(parse_authorization) {
                    None => Identity::Anonymous,
                    Some(Ok(Credentials::Basic { user, password })) => {
                        self.token_login(&user, password.expose(), client).await?;
                        if request.account.as_deref().is_some_and(|a| a != user) {
                            return Err(bad("account does not match the credentials".into()));
                        }
                        Identity::User(user)
                    }
                    Some(_) => {
                        return Err(TokenEndpointError::Unauthorized(basic_challenge(
                            &self.service,
                        )))
                    }
                };
                (request.service, request.scopes, identity)
            }
            Some(body) => {
                let form =
                    berth_auth::token::TokenForm::parse(body).map_err(|e| bad(e.to_string()))?;
                let (Some(user), Some(password)) = (form.username, form.password) else {
                    // refresh_token: we issue none, so none can be valid.
                    return Err(TokenEndpointError::Unauthorized(basic_challenge(
                        &self.service,
                    )));
                };
                self.token_login(&user, password.expose(), client).await?;
                (form.service, form.scopes, Identity::User(user))
            }
        };
        if service.as_deref().is_some_and(|s| s != self.service) {
            return Err(bad(format!(
                "this token service issues tokens for service {:?}",
                self.service
            )));
        }
        let access = self.rules.grant(&identity, &scopes);
        let issued = issuer
            .issue(&identity, &self.service, &access, SystemTime::now())
            .map_err(|e| TokenEndpointError::Internal(e.to_string()))?;
        // Anonymous probes (every `docker pull` starts with one) are noise at info.
        if identity.subject().is_empty() {
            tracing::debug!(client = %client_ip(client), user = "", scopes = %scope::to_scope_string(&access), "token issued");
        } else {
            tracing::info!(client = %client_ip(client), user = identity.subject(), scopes = %scope::to_scope_string(&access), "token issued");
        }
        Ok(issued.response_json())
    }
}

pub(crate) enum TokenEndpointError {
    NotFound,
    BadRequest(String),
    /// With the `WWW-Authenticate` value.
    Unauthorized(String),
    /// 429 with `Retry-After`: backed off, or too many checks at once.
    TooMany(RegistryError),
    Internal(String),
}

/// "push to team-a/app, pull from base": the actions of `missing` that
/// `granted` lacks, for a 403 message.
fn describe_missing(missing: &[Scope], granted: &[Scope]) -> String {
    missing
        .iter()
        .map(|need| {
            let have = granted
                .iter()
                .filter(|g| g.same_resource(need))
                .fold(scope::Actions::NONE, |acc, g| acc.union(g.actions));
            let lacking: Vec<&str> = need
                .actions
                .names()
                .into_iter()
                .filter(|name| scope::Actions::parse_list(name).is_some_and(|a| !have.contains(a)))
                .collect();
            if need.is_catalog() {
                "list the catalog".to_string()
            } else {
                format!("{} {}", lacking.join(" or "), need.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The endpoint of a route, as `berth_auth` classifies it.
fn endpoint_of<'a>(route: &Route<'a>, mount_from: Option<&'a str>) -> Endpoint<'a> {
    match *route {
        Route::Base => Endpoint::Base,
        Route::Catalog => Endpoint::Catalog,
        Route::Tags { name } => Endpoint::Tags { name },
        Route::Manifest { name, .. } => Endpoint::Manifest { name },
        Route::Blob { name, .. } => Endpoint::Blob { name },
        Route::UploadStart { name } => Endpoint::UploadStart { name, mount_from },
        Route::Upload { name, .. } => Endpoint::Upload { name },
        Route::Referrers { name, .. } => Endpoint::Referrers { name },
    }
}

fn client_ip(client: Option<SocketAddr>) -> IpAddr {
    client
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Requests per client address, with `429 Too Many Requests` past the limit.
pub struct ClientRateLimit {
    limiter: Mutex<RateLimiter<IpAddr>>,
}

impl ClientRateLimit {
    pub fn new(limit: RateLimit) -> ClientRateLimit {
        ClientRateLimit {
            limiter: Mutex::new(RateLimiter::new(limit)),
        }
    }

    pub(crate) fn check(&self, client: Option<SocketAddr>) -> Result<(), RegistryError> {
        let ip = client_ip(client);
        let decision = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&ip, Instant::now());
        match decision.retry_after_secs() {
            None => Ok(()),
            Some(secs) => {
                tracing::info!(client = %ip, "rate limited");
                Err(RegistryError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    Code::TooManyRequests,
                    format!("too many requests from {ip}: retry after {secs} s"),
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from(secs)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The login cache and the htpasswd re-read, counted in bcrypt runs and
    //! driven by a hand-moved clock: no 5-minute waits, no timing guesses.

    use super::*;

    // Cost-4 bcrypt hashes of "old-pw" and "new-pw".
    const OLD: &str = "$2b$04$aLQrlQua2nxpR4xEcRzCa./pUVgpqhxCXOVxl1oDgj3zrYT2DlVp.";
    const NEW: &str = "$2b$04$k7qRY2lxcwXlERSp0QOYGOcn9JURXDHO.9udDDUgcK3tc8mgLEp9W";

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        accounts: Accounts,
        now: Arc<Mutex<Instant>>,
        /// The file's mtime, moved forward on every rewrite (see `rewrite`).
        mtime: SystemTime,
    }

    impl Fixture {
        fn new(text: &str) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, text).expect("write htpasswd");
            let now = Arc::new(Mutex::new(Instant::now()));
            let accounts =
                Accounts::open(path.clone(), None, Clock(Some(now.clone()))).expect("open");
            let mtime = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("mtime");
            Fixture {
                _dir: dir,
                path,
                accounts,
                now,
                mtime,
            }
        }

        fn advance(&self, by: Duration) {
            *self.now.lock().unwrap() += by;
        }

        /// Replace the file as an editor would. The mtime is set a second
        /// later than the last one: two writes within one tick of a coarse
        /// file-system clock would otherwise look unchanged.
        fn rewrite(&mut self, text: &str) {
            std::fs::write(&self.path, text).expect("rewrite htpasswd");
            self.mtime += Duration::from_secs(1);
            std::fs::File::options()
                .write(true)
                .open(&self.path)
                .and_then(|f| f.set_modified(self.mtime))
                .expect("set mtime");
        }

        async fn login(&self, user: &str, password: &str) -> bool {
            match self.accounts.verify(user, password, None).await {
                Login::Ok => true,
                Login::Wrong => false,
                Login::Refused { reason, .. } => panic!("login refused: {reason}"),
            }
        }

        /// bcrypt verifications so far, over every version of the file.
        fn bcrypt_runs(&self) -> u64 {
            self.accounts.current().0.bcrypt_runs()
        }

        fn generation(&self) -> u64 {
            self.accounts.current().1
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_30_layer_push_costs_one_bcrypt() {
        let f = Fixture::new(&format!("alice:{OLD}\n"));
        // What a push of 30 layers sends: one request first (`GET /v2/`),
        // then HEAD and upload requests in parallel, all with the same
        // Basic credentials.
        assert!(f.login("alice", "old-pw").await);
        assert_eq!(f.bcrypt_runs(), 1);
        let rest = futures::future::join_all((0..90).map(|_| f.login("alice", "old-pw"))).await;
        assert!(rest.iter().all(|ok| *ok), "every request passes");
        assert_eq!(f.bcrypt_runs(), 1, "one bcrypt for the whole push");
        // A wrong password is never cached: each costs a bcrypt.
        assert!(!f.login("alice", "wrong").await);
        assert!(!f.login("alice", "wrong").await);
        assert_eq!(f.bcrypt_runs(), 3);
        // Nor is the cache keyed on the user alone.
        assert!(!f.login("bob", "old-pw").await);
        assert_eq!(f.bcrypt_runs(), 4);
        assert!(f.login("alice", "old-pw").await);
        assert_eq!(f.bcrypt_runs(), 4, "the right one is still cached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_verified_login_is_remembered_for_five_minutes() {
        let f = Fixture::new(&format!("alice:{OLD}\n"));
        assert!(f.login("alice", "old-pw").await);
        assert_eq!(f.bcrypt_runs(), 1);
        f.advance(VERIFIED_LOGIN_TTL - Duration::from_secs(1));
        assert!(f.login("alice", "old-pw").await);
        assert_eq!(f.bcrypt_runs(), 1, "4 min 59 s later: still cached");
        f.advance(Duration::from_secs(1));
        assert!(f.login("alice", "old-pw").await);
        assert_eq!(f.bcrypt_runs(), 2, "5 min later: checked again");
        // Counted from the last check, not from the first login.
        f.advance(VERIFIED_LOGIN_TTL - Duration::from_secs(1));
        assert!(f.login("alice", "old-pw").await);
        assert_eq!(f.bcrypt_runs(), 2);
        assert_eq!(
            VERIFIED_LOGIN_TTL,
            Duration::from_secs(300),
            "README says 5 minutes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewritten_htpasswd_file_is_used_after_the_recheck() {
        let mut f = Fixture::new(&format!("alice:{OLD}\n"));
        assert!(f.login("alice", "old-pw").await);
        f.rewrite(&format!("# password changed\nalice:{NEW}\n"));
        // Read at most every ACCOUNTS_RECHECK: until then the old file holds.
        assert!(!f.login("alice", "new-pw").await);
        assert_eq!(f.generation(), 0, "not re-read yet");
        f.advance(ACCOUNTS_RECHECK);
        // The next login sees the change: the new password works, and the
        // old one is refused although it was cached minutes ago.
        assert!(f.login("alice", "new-pw").await);
        assert_eq!(f.generation(), 1, "re-read once");
        let runs = f.bcrypt_runs();
        assert!(!f.login("alice", "old-pw").await, "old password refused");
        assert_eq!(
            f.bcrypt_runs(),
            runs + 1,
            "checked, not taken from the cache"
        );

        // A broken file keeps the accounts in use.
        f.rewrite("alice:$apr1$abc$def\n");
        f.advance(ACCOUNTS_RECHECK);
        assert!(f.login("alice", "new-pw").await);
        assert_eq!(f.generation(), 1, "the broken file was not taken");

        // A removed user's cached login ends with the re-read.
        f.rewrite(&format!("bob:{OLD}\n"));
        assert!(
            f.login("alice", "new-pw").await,
            "cached, before the re-read"
        );
        f.advance(ACCOUNTS_RECHECK);
        assert!(!f.login("alice", "new-pw").await, "alice was removed");
        assert!(f.login("bob", "old-pw").await);
        assert_eq!(f.generation(), 2);
    }
}
