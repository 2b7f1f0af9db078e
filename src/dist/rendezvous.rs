//! The rendezvous: rank 0 hands its NCCL id to the other ranks over one TCP connection each
//! (on MASTER_ADDR:MASTER_PORT), and those connections stay open as the run's failure watch.
//!
//! Protocol, one line each way, then the id:
//!   peer → rank 0   `lorafuse-rendezvous <rank> <world>\n`
//!   rank 0 → peer   the id's length as 4 bytes (little-endian), then the id
//! Afterwards, lines: `bye\n` (this rank ends normally), `fail <rank> <reason>\n` (a rank
//! failed; rank 0 passes every peer's on to the others). A connection that closes without
//! `bye` is a rank whose process ended (killed, crashed): rank 0 names it to the others, and
//! a peer whose connection to rank 0 closes names rank 0. NCCL itself cannot say which rank
//! went away; the watch can, and the communicator polls it while it waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dist::error::DistError;
use crate::dist::launch::WorldEnv;

const HELLO: &str = "lorafuse-rendezvous";

/// The open connections, and the first failure they reported.
pub struct Watch {
    rank: usize,
    /// Rank 0: one per peer (index = rank, None for itself); a peer: rank 0's alone.
    links: Arc<Mutex<Vec<Option<TcpStream>>>>,
    failed: Arc<Mutex<Option<(usize, String)>>>,
}

impl Watch {
    /// The first failure seen: the rank and what happened.
    pub fn failed(&self) -> Option<(usize, String)> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This rank failed: tell the others (through rank 0).
    pub fn report(&self, why: &str) {
        set_failed(&self.failed, self.rank, why);
        let line = format!("fail {} {}\n", self.rank, one_line(why));
        send_all(&self.links, &line, None);
    }

    /// This rank ends normally: a closed connection after this is no failure.
    pub fn bye(&self) {
        send_all(&self.links, "bye\n", None);
    }
}

/// Rank 0 serves `id` to the other ranks; the others fetch it. Gives up after `timeout`
/// naming the ranks that never came.
pub fn exchange(
    env: &WorldEnv,
    id: &[u8],
    timeout: Duration,
) -> Result<(Vec<u8>, Watch), DistError> {
    let address = format!("{}:{}", env.master_addr, env.master_port);
    let err = |problem: String| DistError::Rendezvous {
        address: address.clone(),
        problem,
    };
    let deadline = Instant::now() + timeout;
    let failed = Arc::new(Mutex::new(None));
    if env.rank == 0 {
        let links = serve(env, id, deadline).map_err(err)?;
        let links = Arc::new(Mutex::new(links));
        for peer in 1..env.world {
            let reader = links.lock().unwrap_or_else(|p| p.into_inner())[peer]
                .as_ref()
                .and_then(|s| s.try_clone().ok());
            if let Some(reader) = reader {
                let (links, failed) = (links.clone(), failed.clone());
                std::thread::spawn(move || watch_peer(peer, reader, &links, &failed));
            }
        }
        let watch = Watch {
            rank: 0,
            links,
            failed,
        };
        return Ok((id.to_vec(), watch));
    }
    let (stream, got) = fetch(env, &address, deadline).map_err(err)?;
    let reader = stream.try_clone().map_err(|e| err(e.to_string()))?;
    let links = Arc::new(Mutex::new(vec![Some(stream)]));
    let f = failed.clone();
    std::thread::spawn(move || watch_rank0(reader, &f));
    Ok((
        got,
        Watch {
            rank: env.rank,
            links,
            failed,
        },
    ))
}

/// Rank 0: accepts every peer, checks its hello, sends the id.
fn serve(env: &WorldEnv, id: &[u8], deadline: Instant) -> Result<Vec<Option<TcpStream>>, String> {
    let bind = if is_loopback(&env.master_addr) {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let listener = TcpListener::bind((bind, env.master_port))
        .map_err(|e| format!("rank 0 cannot listen on port {}: {e}", env.master_port))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut links: Vec<Option<TcpStream>> = (0..env.world).map(|_| None).collect();
    while links.iter().skip(1).any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut line = String::new();
                BufReader::new(&mut s)
                    .read_line(&mut line)
                    .map_err(|e| format!("reading {from}'s hello: {e}"))?;
                let rank = hello(&line, env.world)
                    .map_err(|p| format!("{from} sent {:?}: {p}", line.trim_end()))?;
                if links[rank].is_some() {
                    return Err(format!("two processes say they are rank {rank}"));
                }
                s.write_all(&(id.len() as u32).to_le_bytes())
                    .and_then(|_| s.write_all(id))
                    .map_err(|e| format!("sending the id to rank {rank}: {e}"))?;
                s.set_read_timeout(None).ok();
                links[rank] = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..env.world)
                        .filter(|&r| links[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(format!(
                        "rank(s) {} of {} did not arrive in time",
                        missing.join(", "),
                        env.world
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(links)
}

/// A peer: connects (retrying until rank 0 listens), says hello, reads the id.
fn fetch(env: &WorldEnv, address: &str, deadline: Instant) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = loop {
        let tried = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve MASTER_ADDR: {e}"))?
            .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok());
        match tried {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                return Err(format!(
                "rank {} could not reach rank 0 in time (is rank 0 running, and the port open?)",
                env.rank
            ))
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    s.write_all(format!("{HELLO} {} {}\n", env.rank, env.world).as_bytes())
        .map_err(|e| e.to_string())?;
    let left = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(left.max(Duration::from_secs(1))))
        .ok();
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(|e| format!("rank 0 refused or closed: {e}"))?;
    let mut id = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut id).map_err(|e| e.to_string())?;
    s.set_read_timeout(None).ok();
    Ok((s, id))
}

/// The rank a hello line names, checked against this run's world.
fn hello(line: &str, world: usize) -> Result<usize, String> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    match parts.as_slice() {
        [HELLO, rank, w] => {
            let (rank, w): (usize, usize) = (
                rank.parse().map_err(|_| "not a rank")?,
                w.parse().map_err(|_| "not a world size")?,
            );
            if w != world {
                return Err(format!("WORLD_SIZE {w}, rank 0 has {world}"));
            }
            if rank == 0 || rank >= world {
                return Err(format!("rank {rank} is not a peer of {world} ranks"));
            }
            Ok(rank)
        }
        _ => Err("not a lorafuse rank".into()),
    }
}

/// Rank 0's watch over peer `rank`: its failure lines, or its connection closing.
fn watch_peer(
    rank: usize,
    reader: TcpStream,
    links: &Mutex<Vec<Option<TcpStream>>>,
    failed: &Mutex<Option<(usize, String)>>,
) {
    let mut lines = BufReader::new(reader).lines();
    let (who, why) = loop {
        match lines.next() {
            Some(Ok(l)) if l == "bye" => return,
            Some(Ok(l)) => {
                if let Some((r, why)) = parse_fail(&l) {
                    break (r, why);
                }
            }
            _ => {
                break (
                    rank,
                    "its process ended without a word (killed or crashed)".into(),
                )
            }
        }
    };
    set_failed(failed, who, &why);
    send_all(
        links,
        &format!("fail {who} {}\n", one_line(&why)),
        Some(rank),
    );
}

/// A peer's watch over rank 0: failures it passes on, or its connection closing.
fn watch_rank0(reader: TcpStream, failed: &Mutex<Option<(usize, String)>>) {
    for line in BufReader::new(reader).lines() {
        match line {
            Ok(l) if l == "bye" => return,
            Ok(l) => {
                if let Some((r, why)) = parse_fail(&l) {
                    set_failed(failed, r, &why);
                    return;
                }
            }
            Err(_) => break,
        }
    }
    set_failed(
        failed,
        0,
        "its process ended without a word (killed or crashed)",
    );
}

fn parse_fail(line: &str) -> Option<(usize, String)> {
    let rest = line.strip_prefix("fail ")?;
    let (rank, why) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((rank.parse().ok()?, why.to_string()))
}

fn set_failed(failed: &Mutex<Option<(usize, String)>>, rank: usize, why: &str) {
    let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some((rank, why.to_string()));
    }
}

/// Writes `line` on every open link but `except`'s (a dead link is skipped).
fn send_all(links: &Mutex<Vec<Option<TcpStream>>>, line: &str, except: Option<usize>) {
    let mut links = links.lock().unwrap_or_else(|p| p.into_inner());
    for (i, l) in links.iter_mut().enumerate() {
        if Some(i) != except {
            if let Some(s) = l {
                let _ = s.write_all(line.as_bytes());
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn is_loopback(addr: &str) -> bool {
    addr == "localhost"
        || addr
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn env(rank: usize, world: usize, port: u16) -> WorldEnv {
        WorldEnv {
            rank,
            world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    fn wait_for(w: &Watch) -> (usize, String) {
        let t0 = Instant::now();
        loop {
            if let Some(f) = w.failed() {
                return f;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no failure seen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_id_reaches_every_rank_and_a_killed_rank_is_named() {
        let port = free_port();
        let id: Vec<u8> = (0..128u8).collect();
        let mut watches: Vec<(Vec<u8>, Watch)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .rev() // peers first: they wait for rank 0 to listen
                .map(|r| {
                    let id = &id;
                    s.spawn(move || exchange(&env(r, 4, port), id, Duration::from_secs(20)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        watches.reverse();
        for (got, _) in &watches {
            assert_eq!(got, &id);
        }
        // Rank 3 ends normally; rank 2 is killed (its connection closes without a word).
        watches[3].1.bye();
        let (_, w2) = watches.remove(2);
        for s in w2.links.lock().unwrap().iter().flatten() {
            s.shutdown(std::net::Shutdown::Both).unwrap(); // as its process's end would
        }
        let (r, why) = wait_for(&watches[0].1);
        assert_eq!(r, 2, "{why}");
        assert!(why.contains("killed or crashed"));
        assert_eq!(wait_for(&watches[1].1).0, 2, "rank 1 hears it from rank 0");
    }

    #[test]
    fn a_failure_goes_to_every_rank_and_a_missing_rank_is_named() {
        let port = free_port();
        let watches: Vec<(Vec<u8>, Watch)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    s.spawn(move || exchange(&env(r, 3, port), b"id", Duration::from_secs(20)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        watches[1].1.report("cannot read image x.png\nsecond line");
        for w in [&watches[0].1, &watches[2].1] {
            let (r, why) = wait_for(w);
            assert_eq!(r, 1);
            assert!(why.contains("x.png second line"), "{why}");
        }
        // Rank 0 alone, its peers never come.
        let e = exchange(&env(0, 3, free_port()), b"id", Duration::from_millis(300))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("rank(s) 1, 2 of 3 did not arrive"),
            "{e}"
        );
    }
}
