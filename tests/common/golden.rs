//! Closeness to a reference library's outputs, as the golden tests check it (tests/golden.rs,
//! sdxl_unet.rs, sdxl_text.rs, sdxl_model.rs).

use std::collections::BTreeMap;
use std::path::Path;

use lorafuse::model::checkpoint::Weights;
use lorafuse::Tensor;

/// The bound of every golden comparison (relative error, f32 against the reference's f32 run).
pub const TOL: f64 = 1e-4;

/// ‖got − want‖ / ‖want‖ over the elements in order.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let diff: f64 = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = w.iter().map(|b| b * b).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}

/// `got` has `want`'s elements within [`TOL`].
pub fn assert_matches(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(
        got.numel(),
        want.numel(),
        "{what}: {} vs {}",
        got.shape(),
        want.shape()
    );
    let e = rel_err(got, want);
    assert!(e < TOL, "{what}: relative error {e:.3e} >= {TOL:e}");
}

/// The reference tensor `name` of a fixture file, at its stored shape.
pub fn get(w: &Weights, name: &str) -> Tensor {
    let shape = w
        .shape(name)
        .unwrap_or_else(|| panic!("reference {name} missing"))
        .to_vec();
    w.get(name, shape).unwrap()
}

/// The same tensor names, and every tensor bit for bit (two layouts of one model).
pub fn assert_same_weights(part: &str, a: &Weights, b: &Weights) {
    let names: Vec<&str> = a.keys().collect();
    assert_eq!(names, b.keys().collect::<Vec<_>>(), "{part}: names");
    for n in names {
        let shape = a.shape(n).unwrap().to_vec();
        assert_eq!(
            a.get(n, shape.clone()).unwrap().to_f32_vec(),
            b.get(n, shape).unwrap().to_f32_vec(),
            "{part}: {n}"
        );
    }
}

/// `t` as an f32 safetensors file (fixture inputs and expected outputs).
pub fn write_tensors(path: &Path, t: &BTreeMap<String, Tensor>) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = t
        .iter()
        .map(|(k, v)| {
            let b = v
                .to_f32_vec()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            (k.clone(), b, v.dims().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (k.clone(), v.unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A file [`write_tensors`] wrote, as f32 values by name.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let f = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (k.to_string(), f)
        })
        .collect()
}

/// An int64 reference tensor of a safetensors file (token ids, timesteps), its values in order.
pub fn int64s(file: &std::path::Path, name: &str) -> Vec<i64> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
    t.data()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
