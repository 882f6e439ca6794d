//! Real programs the tests need beside PostgreSQL: `openssl` to make a CA and certificates,
//! `pgbouncer` in front of a throwaway cluster, the Prometheus Pushgateway and `promtool`
//! for the metrics. `.ci/run` installs them all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, is_root, start_cluster_with, Server};

/// A test PKI made with openssl: a CA that signs the server's certificate (for `localhost`
/// only) and a client certificate for `certuser`, and a second CA that signs nothing the
/// server trusts (and a `certuser` certificate of its own).
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.crt -days 3650 -subj "/CN=tenantctl test CA"
openssl req -x509 $ec -keyout other-ca.key -out other-ca.crt -days 3650 -subj "/CN=another CA"
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' > client.ext
openssl req $ec -keyout server.key -out server.csr -subj "/CN=localhost"
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 365 -extfile server.ext
openssl req $ec -keyout client.key -out client.csr -subj "/CN=certuser"
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 365 -extfile client.ext
openssl req $ec -keyout stranger.key -out stranger.csr -subj "/CN=certuser"
openssl x509 -req -in stranger.csr -CA other-ca.crt -CAkey other-ca.key -CAcreateserial -out stranger.crt -days 365 -extfile client.ext
chmod 0755 .
chmod 0644 *
"#;
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(dir.path())
            .output()
            .expect("running openssl (install it: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A cluster that speaks TLS only: `hostssl` scram-sha-256 for password roles, `hostssl
    /// … cert` for `certuser`, every plaintext TCP connection rejected (the test itself
    /// connects over the Unix socket).
    pub fn tls_cluster(&self) -> Server {
        let pki = self.dir.path().display();
        let setup = format!(
            r#"cp "{pki}/server.crt" "{pki}/server.key" "{pki}/ca.crt" "$dir/data/"
chmod 600 "$dir/data/server.key"
cat > "$dir/data/pg_hba.conf" <<'HBA'
local all all trust
hostssl all certuser 127.0.0.1/32 cert
hostssl all certuser ::1/128 cert
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl all all ::1/128 scram-sha-256
hostnossl all all 0.0.0.0/0 reject
hostnossl all all ::/0 reject
HBA"#
        );
        start_cluster_with(
            &[
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
                "ssl_ca_file=ca.crt",
            ],
            &setup,
        )
    }
}

/// A PgBouncer in front of `server` (every database, as the `postgres` superuser), in the
/// given pool mode. Stopped when dropped.
pub struct Bouncer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Bouncer {
    pub fn start(server: &Server, pool_mode: &str) -> Bouncer {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .iter()
            .find(|p| Path::new(p).exists())
            .copied()
            .unwrap_or("pgbouncer");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={backend}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\npool_mode = {pool_mode}\n\
             max_client_conn = 500\ndefault_pool_size = 40\nserver_lifetime = 3600\n\
             ignore_startup_parameters = extra_float_digits\nlogfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            backend = server.port,
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let ini = dir.path().join("pgbouncer.ini").display().to_string();
        // PgBouncer refuses to run as root: run it as the server's OS user.
        let mut cmd = if is_root() {
            let _ = Command::new("chmod")
                .args(["-R", "a+rwX"])
                .arg(dir.path())
                .status();
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", bin, &ini]);
            c
        } else {
            let mut c = Command::new(bin);
            c.arg(&ini);
            c
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pgbouncer (install it: apt-get install pgbouncer)");
        let bouncer = Bouncer {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// `postgres://postgres@127.0.0.1:<pgbouncer>/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // SIGTERM to pgbouncer itself (runuser would not pass a SIGKILL on).
        let pidfile = self._dir.path().join("pgbouncer.pid");
        if let Ok(pid) = std::fs::read_to_string(pidfile) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        let _ = self.child.wait();
    }
}

/// A Prometheus Pushgateway on a free port (nothing kept on disk). Stopped when dropped.
pub struct Pushgateway {
    pub port: u16,
    child: Child,
}

impl Pushgateway {
    pub fn start() -> Pushgateway {
        let port = free_port();
        let child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-pushgateway (install it: apt-get install prometheus-pushgateway)");
        let gateway = Pushgateway { port, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the pushgateway did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the Pushgateway holds, from its own API (`/api/v1/metrics`).
    pub fn groups(&self) -> serde_json::Value {
        let text = ureq::get(format!("{}/api/v1/metrics", self.url()))
            .call()
            .expect("the pushgateway's API answers")
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on a text exposition: the problems it finds (empty: none).
pub fn promtool_problems(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (install it: apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.success() {
        true => said.trim().to_string(),
        false => format!("promtool failed: {said}"),
    }
}
