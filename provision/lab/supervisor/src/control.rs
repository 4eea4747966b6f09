//! The control socket (`control.sock` in the state directory): one request line
//! (`status` or `down`), one JSON answer line. Only root can reach it (mode 0600).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::state::Record;
use crate::{LabError, io};

/// A `down` request: the supervisor answers on this stream once everything is stopped.
pub type DownRequest = UnixStream;

/// Serves the socket from a thread: `status` answers the current record at once, `down`
/// is handed to the supervisor's main thread through `down`.
pub fn serve(
    socket: &Path,
    record: Arc<Mutex<Record>>,
    down: mpsc::Sender<DownRequest>,
) -> Result<(), LabError> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(io(format!("bind {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", socket.display())))?;
    std::thread::Builder::new()
        .name("lab-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let Ok(clone) = stream.try_clone() else { continue };
                if BufReader::new(clone).read_line(&mut line).is_err() {
                    continue;
                }
                match line.trim() {
                    "status" => {
                        let r = record.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        answer(stream, &json!({"ok": true, "record": r}));
                    }
                    "down" => {
                        if let Err(mpsc::SendError(s)) = down.send(stream) {
                            answer(s, &json!({"ok": false, "error": "the supervisor is already stopping"}));
                        }
                    }
                    other => {
                        answer(stream, &json!({"ok": false, "error": format!("unknown request `{other}`")}))
                    }
                }
            }
        })
        .map_err(io("start the control thread"))?;
    Ok(())
}

/// Writes one JSON line to a client (which may have gone: nothing to do then).
pub fn answer(mut stream: UnixStream, value: &Value) {
    let _ = writeln!(stream, "{value}");
}

/// Sends `request` and reads the answer; `timeout` bounds the wait (None: wait as long as it takes).
pub fn request(socket: &Path, request: &str, timeout: Option<Duration>) -> Result<Value, LabError> {
    let err = |detail: String| LabError::Control { socket: socket.to_owned(), detail };
    let mut stream = UnixStream::connect(socket).map_err(|e| err(e.to_string()))?;
    stream.set_read_timeout(timeout).map_err(|e| err(e.to_string()))?;
    writeln!(stream, "{request}").map_err(|e| err(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| err(e.to_string()))?;
    if line.trim().is_empty() {
        return Err(err("it closed the connection without an answer".into()));
    }
    serde_json::from_str(&line).map_err(|e| err(format!("unreadable answer: {e}")))
}
