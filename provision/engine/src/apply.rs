//! The one function through which every change to a host goes. In check mode it returns
//! before touching anything, so `--check` reports exactly what a real run would do.

use std::time::{Duration, Instant};

use crate::conn::Conn;
use crate::plan::{Change, Mutation, ProbeOut, tail};
use crate::report::Log;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Transport(#[from] provision_ssh::SshError),
    #[error("exit status {status}: {stderr}")]
    Failed { status: String, stderr: String },
    #[error(
        "no reboot seen within {0} s: the boot id did not change and the connection did not drop and come back"
    )]
    RebootTimeout(u64),
    #[error("went down for the reboot and did not come back within {secs} s; last attempt: {last}")]
    NotBack { secs: u64, last: String },
    #[error("cannot read the boot id before rebooting, so a reboot could not be confirmed; not rebooting")]
    BootIdUnreadable,
}

/// Applies `change` to the host behind `conn` (which a reboot replaces), or does nothing in check mode.
pub async fn apply_change(
    conn: &mut Conn,
    change: &Change,
    check: bool,
    timeout: Duration,
    log: &Log,
    host: &str,
) -> Result<(), ApplyError> {
    if check {
        return Ok(());
    }
    match &change.mutation {
        Mutation::Script { script, stdin } => {
            log.line(host, &format!("change: {}\n$ {script}", change.summary));
            let out = conn.mutate(script, stdin.as_deref(), timeout).await?;
            log.output(host, &out);
            if out.success() {
                Ok(())
            } else {
                let status = match (out.status, &out.signal) {
                    (Some(s), _) => s.to_string(),
                    (None, Some(sig)) => format!("killed by {sig}"),
                    (None, None) => "unknown".into(),
                };
                let mut stderr = out.stderr_str();
                if stderr.trim().is_empty() {
                    stderr = out.stdout_str();
                }
                Err(ApplyError::Failed { status, stderr: tail(&stderr, 800) })
            }
        }
        Mutation::Reboot { timeout } => reboot(conn, *timeout, log, host).await,
    }
}

/// Runs a capture whose command changes the host (e.g. `microk8s add-node` mints a join
/// token). Callers skip it in check mode; it is here so that every change has one home.
pub async fn changing_capture(
    conn: &Conn,
    cmd: &str,
    timeout: Duration,
    log: &Log,
    host: &str,
) -> Result<ProbeOut, ApplyError> {
    log.line(host, &format!("change (capture): $ {cmd}"));
    let out = conn.mutate(cmd, None, timeout).await?;
    Ok(ProbeOut { rc: out.status.map(|s| s as i32).unwrap_or(-1), text: out.stdout_str() })
}

async fn boot_id(conn: &Conn) -> Option<String> {
    let out = conn.read("cat /proc/sys/kernel/random/boot_id", Duration::from_secs(10)).await.ok()?;
    Some(out.stdout_str().trim().to_string())
}

/// Reboots and waits until SSH answers again on a host that really restarted: its boot id
/// changed, or (where the boot id cannot change, e.g. a container) the old connection dropped
/// and a new one was established. A failed read on a live connection proves neither: a slow
/// or failing command is not a reboot.
async fn reboot(conn: &mut Conn, timeout: Duration, log: &Log, host: &str) -> Result<(), ApplyError> {
    // Without the boot id from before, a new one could not be told from the old.
    let before = boot_id(conn).await.ok_or(ApplyError::BootIdUnreadable)?;
    log.line(host, "change: reboot");
    // Detached so that the command returns before the connection drops.
    let _ = conn
        .mutate(
            "nohup sh -c 'sleep 1; systemctl reboot || reboot' >/dev/null 2>&1 &",
            None,
            Duration::from_secs(15),
        )
        .await;
    let start = Instant::now();
    // Whether the host was seen going down (the connection dropped, and no new one came up).
    let mut down = false;
    // Why the latest reconnect did not do: an operator (or a test) whose host stays away
    // learns whether SSH refused, timed out, or answered and then failed.
    let mut last = String::from("no reconnect tried");
    while start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !conn.is_closed() {
            match boot_id(conn).await {
                Some(id) if id != before => {}
                Some(_) => continue,
                // The read failed: either a slow or failing command on a live connection (no
                // reboot), or a connection that died with the host before the transport noticed
                // (keepalives take tens of seconds). Only a new connection reading a new boot id
                // tells them apart.
                None => {
                    match conn.reconnect().await {
                        Ok(new) => match boot_id(&new).await {
                            Some(id) if id != before => {
                                log.line(
                                    host,
                                    &format!("back after reboot in {:.0} s", start.elapsed().as_secs_f64()),
                                );
                                *conn = new;
                                return Ok(());
                            }
                            Some(_) => last = "connected, the boot id has not changed".into(),
                            None => last = "connected, the boot id could not be read".into(),
                        },
                        // No new connection either: the host is down (a refusal such as the
                        // host lock, which the old connection still holds, says it is up).
                        Err(e) => {
                            down |= e.is_unreachable();
                            last = e.to_string();
                        }
                    }
                    continue;
                }
            }
        }
        // The old connection is gone (or the host already reports a new boot): a reboot
        // happened once a new connection reads the boot id.
        match conn.reconnect().await {
            Ok(new) if boot_id(&new).await.is_some() => {
                log.line(host, &format!("back after reboot in {:.0} s", start.elapsed().as_secs_f64()));
                *conn = new;
                return Ok(());
            }
            Ok(_) => last = "connected, the boot id could not be read".into(),
            Err(e) => {
                down |= e.is_unreachable();
                last = e.to_string();
            }
        }
    }
    if down {
        return Err(ApplyError::NotBack { secs: timeout.as_secs(), last });
    }
    Err(ApplyError::RebootTimeout(timeout.as_secs()))
}
