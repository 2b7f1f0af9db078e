//! The `cuda` feature's device probe: a clear error without a driver or device, and a sane
//! description with one. Kernel tests arrive with the CUDA backend.
#![cfg(feature = "cuda")]

mod common;

#[test]
fn probe_reports_device_or_why_not() {
    match lorafuse::backend::cuda::probe() {
        Ok(info) => {
            println!("CUDA device: {info}");
            assert!(info.compute_capability.0 >= 7, "{info}");
            assert!(info.total_memory > 0, "{info}");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("libcuda") || msg.contains("device"), "{msg}");
            common::cuda::skip_or_fail(&msg);
        }
    }
}
