//! Who is running tenantctl, and where: the actor, the host and the command line recorded in
//! the audit trail. Kept apart from config and the control schema, which both use it.

/// Who is running tenantctl: `--actor`, else `TENANTCTL_ACTOR`, else the OS user.
pub fn actor(flag: Option<&str>) -> String {
    if let Some(a) = flag.filter(|a| !a.is_empty()) {
        return a.to_string();
    }
    ["TENANTCTL_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into())
}

/// The login name of this process's uid, from /proc and /etc/passwd (no environment needed).
pub fn os_user() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

/// Where tenantctl runs.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// This process's command line for the audit trail: shell-quoted where needed, passwords
/// scrubbed (the URL's password was registered when the targets were resolved).
pub fn command_line() -> String {
    let words: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 { "tenantctl".to_string() } else { a };
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect();
    crate::redact::scrub(&words.join(" "))
}
