//! Who this process is in a data-parallel run: read from the environment the launchers
//! people use set (torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`; SLURM's `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`), or set by
//! `lorafuse train --gpus` for the workers it starts.

use crate::dist::error::DistError;

/// One process's place in a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldEnv {
    pub rank: usize,
    pub world: usize,
    /// The rank on this machine: the GPU it takes (`cuda:LOCAL_RANK` of the visible ones).
    pub local_rank: usize,
    /// Where rank 0 serves the rendezvous.
    pub master_addr: String,
    pub master_port: u16,
}

/// The variables, in the order they are looked for: torchrun's, then SLURM's.
const RANK: [&str; 2] = ["RANK", "SLURM_PROCID"];
const WORLD: [&str; 2] = ["WORLD_SIZE", "SLURM_NTASKS"];
const LOCAL: [&str; 2] = ["LOCAL_RANK", "SLURM_LOCALID"];

impl WorldEnv {
    /// From the process environment: None when no launcher says there is more than one
    /// rank (a single-device run).
    pub fn from_env() -> Result<Option<WorldEnv>, DistError> {
        WorldEnv::from_vars(|k| std::env::var(k).ok())
    }

    /// From `var` (the environment, or a table in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<WorldEnv>, DistError> {
        let first = |names: [&'static str; 2]| -> Option<(&'static str, String)> {
            names.into_iter().find_map(|n| var(n).map(|v| (n, v)))
        };
        let Some((world_var, world)) = first(WORLD) else {
            return Ok(None);
        };
        let world = number(world_var, &world)?;
        if world <= 1 {
            return Ok(None);
        }
        let (rank_var, rank) = first(RANK).ok_or_else(|| missing(RANK[0], world_var))?;
        let rank = number(rank_var, &rank)?;
        if rank >= world {
            return Err(DistError::Environment {
                variable: rank_var.into(),
                value: rank.to_string(),
                problem: format!("a rank must be below {world_var} = {world}"),
            });
        }
        let local_rank = match first(LOCAL) {
            Some((n, v)) => number(n, &v)?,
            None => rank,
        };
        let master_addr = var("MASTER_ADDR").ok_or_else(|| missing("MASTER_ADDR", world_var))?;
        let port = var("MASTER_PORT").ok_or_else(|| missing("MASTER_PORT", world_var))?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| DistError::Environment {
                variable: "MASTER_PORT".into(),
                value: port.clone(),
                problem: "a TCP port number, 1 to 65535".into(),
            })?;
        Ok(Some(WorldEnv {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
        }))
    }
}

fn number(name: &str, value: &str) -> Result<usize, DistError> {
    value.trim().parse().map_err(|_| DistError::Environment {
        variable: name.into(),
        value: value.into(),
        problem: "a whole number".into(),
    })
}

fn missing(name: &str, because: &str) -> DistError {
    DistError::Environment {
        variable: name.into(),
        value: String::new(),
        problem: format!(
            "not set, but {because} says this is one of several ranks; every rank needs \
             RANK (or SLURM_PROCID), MASTER_ADDR and MASTER_PORT (under SLURM: export \
             MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) and a \
             free MASTER_PORT in the job script)"
        ),
    }
}

/// The GPUs of `--gpus 0,1,3`: distinct device ordinals, at least one.
pub fn parse_gpus(list: &str) -> Result<Vec<usize>, DistError> {
    let bad = |problem: &str| DistError::Environment {
        variable: "--gpus".into(),
        value: list.into(),
        problem: problem.into(),
    };
    let gpus: Vec<usize> = list
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad("a comma-separated list of GPU numbers, e.g. 0,1,2,3"))?;
    let mut seen = gpus.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != gpus.len() {
        return Err(bad("each GPU at most once"));
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn torchrun_and_slurm() {
        let t = WorldEnv::from_vars(env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((t.rank, t.world, t.local_rank), (3, 8, 1));
        assert_eq!((t.master_addr.as_str(), t.master_port), ("node7", 29500));
        let s = WorldEnv::from_vars(env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((s.rank, s.world, s.local_rank), (5, 6, 1));
        // No launcher, or a world of one: a single-device run.
        assert_eq!(WorldEnv::from_vars(env(&[])).unwrap(), None);
        assert_eq!(
            WorldEnv::from_vars(env(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
            None
        );
    }

    #[test]
    fn incomplete_environments_name_the_variable() {
        let e = WorldEnv::from_vars(env(&[("WORLD_SIZE", "2"), ("RANK", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("MASTER_ADDR"), "{e}");
        let e = WorldEnv::from_vars(env(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("below WORLD_SIZE = 2"), "{e}");
        let e = WorldEnv::from_vars(env(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "http"),
        ]))
        .unwrap_err();
        assert!(e.to_string().starts_with("MASTER_PORT = \"http\""), "{e}");
        assert!(WorldEnv::from_vars(env(&[("WORLD_SIZE", "two")])).is_err());
    }

    #[test]
    fn gpu_lists() {
        assert_eq!(parse_gpus("0,1, 3").unwrap(), vec![0, 1, 3]);
        assert!(parse_gpus("0,0").is_err());
        assert!(parse_gpus("0;1").is_err());
        assert!(parse_gpus("").is_err());
    }
}
