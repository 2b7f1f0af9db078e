//! `Backend`: the whole op set that the SD1.x UNet, VAE and CLIP text encoder need, each op
//! with its forward and, where a gradient flows through it, its input gradient.
//!
//! The op set is split by family, one trait each ([`LinearOps`], [`ConvOps`], [`NormOps`],
//! ...), declared here next to its argument types. Each backend implements a family in one
//! file: `impl LinearOps for CpuBackend` in cpu/linear.rs, `impl LinearOps for CudaBackend`
//! in cuda/ops/linear.rs, and so on; [`Backend`] is every family at once (a blanket impl), so
//! model code holds a `&dyn Backend`. Calling an op needs its trait in scope:
//! `use crate::backend::prelude::*;`. A new op family is a trait here, a file per backend,
//! and a line in [`Backend`] and [`prelude`].
//!
//! Frozen weights never get a gradient, so there is no weight-gradient op except the
//! adapters' (adapter.rs: what a layer's adapter is, as an input to `linear` and `conv2d`).
//! Ops return fresh tensors; the few that accumulate take `&mut` outputs and an explicit
//! [`Accum`], never a boolean.
//!
//! Layouts: feature maps NCHW, token sequences [batch, length, channels], weights as
//! PyTorch stores them (linear [out, in], conv [out, in, kh, kw]). Scalars are f64 so that
//! the f64 CPU path used by gradient checks is not rounded through f32.

pub mod adapter;
pub mod check;
pub mod cpu;
pub mod cuda;
pub mod factored;
pub mod quant;
pub mod select;

use crate::error::Result;
use crate::tensor::{DType, Tensor};
pub use adapter::{Adapter, AdapterBackward, Lora, LoraBackward};
pub use factored::{AdafactorBuffers, AdafactorSegment, AdafactorStep, AdafactorTable};

/// The op families' traits, for `use crate::backend::prelude::*;` wherever ops are called
/// (a `&dyn Backend` reaches a family's methods only with its trait in scope).
pub mod prelude {
    pub use super::{
        ActivationOps, AttentionOps, Backend, BackendInfo, ConvOps, DecomposeOps, DiffusionOps,
        ElementwiseOps, LayoutOps, LinearOps, NormOps, OptimOps, Tensors,
    };
}

/// The op set. Implemented by the CPU backend (the reference) and by the CUDA backend (a GPU,
/// the kernel emulator or the memory meter); model code talks to nothing else. Every type
/// with all the families is a `Backend`.
pub trait Backend:
    BackendInfo
    + Tensors
    + LinearOps
    + ConvOps
    + NormOps
    + ActivationOps
    + AttentionOps
    + LayoutOps
    + ElementwiseOps
    + DecomposeOps
    + DiffusionOps
    + OptimOps
    + Send
    + Sync
{
}

impl<B> Backend for B where
    B: BackendInfo
        + Tensors
        + LinearOps
        + ConvOps
        + NormOps
        + ActivationOps
        + AttentionOps
        + LayoutOps
        + ElementwiseOps
        + DecomposeOps
        + DiffusionOps
        + OptimOps
        + Send
        + Sync
{
}

/// Whether an op overwrites its output or adds to it. Gradients of LoRA weights are
/// assigned on the first micro-batch of an optimizer step and added on the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accum {
    Assign,
    Add,
}

/// Device memory held by a backend's pool, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// In live buffers now.
    pub in_use: usize,
    /// The most in live buffers at once so far.
    pub peak: usize,
}

/// What a backend is and the memory it holds (cpu/mod.rs, cuda/backend.rs).
pub trait BackendInfo {
    /// A short name for messages: "cpu", "cuda:0".
    fn name(&self) -> &'static str;
    /// The dtype this backend computes activations in.
    fn compute_dtype(&self) -> DType;
    /// Device memory held by this backend (None on the CPU, which uses the process's heap).
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
    /// Gives memory cached for reuse back to the device (the trainer calls it once the
    /// VAE and text encoder are released, whose buffer sizes training never asks for again).
    fn release_cache(&self) -> Result<()> {
        Ok(())
    }
    /// Free device memory now, where the backend runs on a device that reports it (a GPU).
    fn device_free_memory(&self) -> Option<usize> {
        None
    }
    /// The launch limits of the device, on a CUDA device (GPU, emulator or meter).
    fn device_limits(&self) -> Option<cuda::DeviceLimits> {
        None
    }
    /// This backend's device computing in `dtype` instead (the same memory pool, so tensors
    /// pass between the two): the f32 VAE beside an f16 UNet (`no_half_vae`). None where a
    /// backend computes in one dtype only (the CPU).
    fn with_compute_dtype(&self, _dtype: DType) -> Option<Box<dyn Backend>> {
        None
    }
}

/// Tensors in and out of a backend (cpu/elementwise.rs, cuda/ops/elementwise.rs).
pub trait Tensors {
    /// A tensor of zeros on this backend.
    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor>;
    /// Copies host f32 data to this backend, converted to `dtype`.
    fn tensor_from_f32(&self, shape: &[usize], data: &[f32], dtype: DType) -> Result<Tensor>;
    /// Copies a tensor to the host as f32.
    fn to_f32_vec(&self, x: &Tensor) -> Result<Vec<f32>>;
    /// Converts between dtypes (f16 <-> f32, and f64 on the CPU).
    fn cast(&self, x: &Tensor, dtype: DType) -> Result<Tensor>;
}

/// What the forward of a linear layer returns.
pub struct LinearOut {
    /// y = x·Wᵀ + bias + scale·ũ·Bᵀ, [.., out].
    pub y: Tensor,
    /// ũ = (x·Aᵀ) ⊙ mask (u = x·Aᵀ itself without dropout), [.., rank], when the adapter is
    /// a LoRA ([`Adapter::Lora`]): the backward reuses it for dB. It is the hidden *after*
    /// dropout.
    pub lora_hidden: Option<Tensor>,
}

/// Linear layers and their adapters (cpu/linear.rs, cuda/ops/linear.rs).
pub trait LinearOps {
    /// y = x·Wᵀ (+ bias) (+ the adapter's term). x [.., in], w [out, in], bias [out].
    /// [`Adapter::Lora`]: + scale·ũ·Bᵀ with ũ = (x·Aᵀ) ⊙ mask (the mask when the LoRA
    /// carries one, [`Lora::dropout`]), and ũ is returned as `lora_hidden`.
    fn linear(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        adapter: Option<Adapter<'_>>,
    ) -> Result<LinearOut>;
    /// Backward of [`LinearOps::linear`] with frozen W. [`AdapterBackward::Lora`]: with
    /// g = (dY·B) ⊙ mask (no mask: dY·B), dB (+)= s·dYᵀ·ũ, dA (+)= s·gᵀ·X. When `want_dx`,
    /// returns dX = dY·W (+ s·g·A).
    fn linear_backward(
        &self,
        dy: &Tensor,
        w: &Tensor,
        adapter: Option<AdapterBackward<'_>>,
        want_dx: bool,
    ) -> Result<Option<Tensor>>;
}

/// Stride and zero padding of a square-kernel 2-D convolution (same on both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    /// Output size along one axis for input size `n` and kernel size `k`, or `None` when the
    /// padded input is smaller than the kernel.
    pub fn out_size(&self, n: usize, k: usize) -> Option<usize> {
        (n + 2 * self.padding)
            .checked_sub(k)
            .map(|span| span / self.stride + 1)
    }
}

/// What the forward of a convolution returns.
pub struct ConvOut {
    /// y = conv(x, w) + bias + scale·conv1x1(ũ, up), [N, O, Ho, Wo].
    pub y: Tensor,
    /// ũ = conv(x, down) ⊙ mask, [N, r, Ho, Wo], when the adapter is a LoRA (LoCon): the
    /// backward reuses it for d(up). The hidden *after* dropout, as [`LinearOut::lora_hidden`].
    pub lora_hidden: Option<Tensor>,
}

/// Convolutions (cpu/conv.rs, cuda/ops/conv.rs).
pub trait ConvOps {
    /// 2-D convolution, x [N, C, H, W], w [O, C, k, k], bias [O] -> [N, O, Ho, Wo], with the
    /// adapter's term: [`Adapter::Lora`] (LoCon) has down [r, C, k, k], run with the layer's
    /// stride and padding, and up [O, r, 1, 1]: y += scale·conv1x1(conv(x, down) ⊙ mask, up),
    /// the mask [N, r, Ho, Wo] ([`Lora::dropout`]). ũ is returned as `lora_hidden`.
    fn conv2d_out(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2d,
        adapter: Option<Adapter<'_>>,
    ) -> Result<ConvOut>;
    /// [`ConvOps::conv2d_out`]'s y alone (inference: the adapter's hidden is not kept).
    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2d,
        adapter: Option<Adapter<'_>>,
    ) -> Result<Tensor> {
        Ok(self.conv2d_out(x, w, bias, p, adapter)?.y)
    }
    /// Gradient of conv2d with respect to its input, for an input of spatial size `input_hw`
    /// (stride 2 maps two input sizes to one output size, so the size must be given).
    fn conv2d_input_grad(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: (usize, usize),
        p: Conv2d,
    ) -> Result<Tensor>;
    /// Backward of [`ConvOps::conv2d_out`] with frozen w: returns dX. [`AdapterBackward::Lora`]
    /// (x: the layer's input, hidden: the forward's ũ [N, r, Ho, Wo]): with
    /// g = convᵀ₁ₓ₁(dY, up) ⊙ mask [N, r, Ho, Wo], d(up) (+)= s·Σ dY·ũᵀ, d(down) (+)= the
    /// weight gradient s·∂conv(x, ·)ᵀg, and dX gets + s·convᵀ(g, down).
    fn conv2d_backward(
        &self,
        dy: &Tensor,
        w: &Tensor,
        input_hw: (usize, usize),
        p: Conv2d,
        adapter: Option<AdapterBackward<'_>>,
    ) -> Result<Tensor>;
    /// Weight gradient of a convolution: dw [O, C, k, k] `=` or `+=` (by `accum`)
    /// scale·Σₙ Σ_pixels dy[n, o, oh, ow]·x[n, c, oh·s + i - p, ow·s + j - p], for x
    /// [N, C, H, W] and dy [N, O, Ho, Wo]. dw is f32 on CUDA whatever x's dtype (an
    /// adapter's gradient), x's dtype on the CPU.
    fn conv2d_weight_grad(
        &self,
        x: &Tensor,
        dy: &Tensor,
        p: Conv2d,
        scale: f64,
        dw: &mut Tensor,
        accum: Accum,
    ) -> Result<()>;
}

/// Per-group (GroupNorm) or per-row (LayerNorm) statistics saved by the forward.
pub struct NormStats {
    /// Mean of each normalized group, [N, groups] or [rows].
    pub mean: Tensor,
    /// 1/sqrt(var + eps) of each normalized group (biased variance, as PyTorch).
    pub rstd: Tensor,
}

impl NormStats {
    pub fn size_in_bytes(&self) -> usize {
        self.mean.size_in_bytes() + self.rstd.size_in_bytes()
    }
}

/// Normalization (cpu/norm.rs, cuda/ops/norm.rs).
pub trait NormOps {
    /// GroupNorm over x [N, C, ...] with `groups` groups and affine gamma, beta [C];
    /// with `silu`, SiLU is applied to the result in the same pass.
    #[allow(clippy::too_many_arguments)]
    fn group_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<(Tensor, NormStats)>;
    /// dX of [`NormOps::group_norm`] (gamma and beta are frozen).
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        stats: &NormStats,
        groups: usize,
        silu: bool,
    ) -> Result<Tensor>;
    /// LayerNorm over the last dimension of x [.., C], affine gamma, beta [C].
    fn layer_norm(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, NormStats)>;
    /// dX of [`NormOps::layer_norm`] (gamma and beta are frozen).
    fn layer_norm_backward(
        &self,
        dy: &Tensor,
        x: &Tensor,
        gamma: &Tensor,
        stats: &NormStats,
    ) -> Result<Tensor>;
}

/// The pointwise nonlinearities of SD1.x.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·sigmoid(x) (ResNet blocks, time MLP).
    Silu,
    /// The exact, erf-based GELU (diffusers' default, approximate="none").
    Gelu,
    /// x·sigmoid(1.702·x), CLIP's activation.
    QuickGelu,
    /// GELU's tanh approximation, ½x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (PyTorch's
    /// approximate="tanh", timm's `gelu_tanh`: the WD14 v3 taggers' ViT).
    GeluTanh,
}

/// Pointwise activations and GEGLU (cpu/activation.rs, cuda/ops/activation.rs).
pub trait ActivationOps {
    /// A pointwise activation.
    fn activation(&self, x: &Tensor, act: Activation) -> Result<Tensor>;
    /// dX of [`ActivationOps::activation`], from the saved input.
    fn activation_backward(&self, dy: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor>;
    /// GEGLU: x [.., 2F] split into (h, gate) along the last dim; returns h·gelu(gate), [.., F].
    fn geglu(&self, x: &Tensor) -> Result<Tensor>;
    /// dX of [`ActivationOps::geglu`], [.., 2F].
    fn geglu_backward(&self, dy: &Tensor, x: &Tensor) -> Result<Tensor>;
}

/// Multi-head attention on [batch, length, heads·head_dim] tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    pub heads: usize,
    /// Query i sees keys 0..=i only (CLIP's text encoder). Needs as many queries as keys.
    pub causal: bool,
}

/// Attention (cpu/attention.rs, cuda/ops/attention.rs with its fast and wide variants).
pub trait AttentionOps {
    /// softmax(Q·Kᵀ/sqrt(d))·V per head. q [B, Lq, H·d], k [B, Lk, H·d], v [B, Lk, H·dv].
    /// Returns O [B, Lq, H·dv] and the log-sum-exp of each score row, [B, H, Lq].
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        p: Attention,
    ) -> Result<(Tensor, Tensor)>;
    /// (dQ, dK, dV) of [`AttentionOps::attention`] from the saved Q, K, V, O and LSE.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        d_o: &Tensor,
        p: Attention,
    ) -> Result<(Tensor, Tensor, Tensor)>;
}

/// Zeros added on each side of a feature map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pad2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

/// Layout and routing: resampling, concatenation, padding, token <-> feature-map
/// transposes, embedding rows (cpu/layout.rs, cuda/ops/layout.rs).
pub trait LayoutOps {
    /// Nearest-neighbour 2x upsampling, [N, C, H, W] -> [N, C, 2H, 2W].
    fn upsample_nearest2x(&self, x: &Tensor) -> Result<Tensor>;
    /// Its gradient: each 2x2 block of dy summed, [N, C, 2H, 2W] -> [N, C, H, W].
    fn upsample_nearest2x_backward(&self, dy: &Tensor) -> Result<Tensor>;
    /// Concatenation along channels (the UNet's skip connections), [N, Ca, ..] ++ [N, Cb, ..].
    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// The gradient of a concat: dy [N, Ca+Cb, ..] split into ([N, Ca, ..], [N, Cb, ..]).
    fn split_channels(&self, dy: &Tensor, ca: usize) -> Result<(Tensor, Tensor)>;
    /// Zero padding of a feature map, [N, C, H, W] -> [N, C, top+H+bottom, left+W+right].
    /// Forward only: the VAE encoder's asymmetric (0, 1, 0, 1) pad before its stride-2 convs.
    fn pad2d(&self, x: &Tensor, pad: Pad2d) -> Result<Tensor>;
    /// [N, C, H, W] -> [N, H·W, C]: feature map to tokens.
    fn nchw_to_nlc(&self, x: &Tensor) -> Result<Tensor>;
    /// [N, H·W, C] -> [N, C, H, W]: tokens back to a feature map.
    fn nlc_to_nchw(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor>;
    /// Rows of `table` [V, C] picked by `ids` -> [ids.len(), C] (CLIP's token embeddings).
    /// Frozen table: no gradient.
    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor>;
}

/// Elementwise arithmetic (cpu/elementwise.rs, cuda/ops/elementwise.rs).
pub trait ElementwiseOps {
    /// a + b, same shapes.
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// a += b: residual and skip gradients accumulate.
    fn add_assign(&self, a: &mut Tensor, b: &Tensor) -> Result<()>;
    /// x · s.
    fn scale(&self, x: &Tensor, s: f64) -> Result<Tensor>;
    /// a ⊙ b, same shapes (LoHa's Hadamard product of its two low-rank terms).
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// x [N, C, ...] + bias [N, C] broadcast over the spatial dims (time embedding in ResNets).
    fn add_channel_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor>;
}

/// DoRA's weight decomposition (lora/dora.rs) of a weight matrix W' [rows, n]: each row
/// rescaled to a trainable magnitude (cpu/decompose.rs, cuda/ops/decompose.rs).
pub trait DecomposeOps {
    /// V = W' ⊙ m / (‖W'‖ + eps) row by row, and the row norms ‖W'‖ [rows] (without eps), for
    /// the backward. `m` holds `rows` magnitudes in any shape ([rows, 1] as files store it).
    fn weight_decompose(&self, w: &Tensor, m: &Tensor, eps: f64) -> Result<(Tensor, Tensor)>;
    /// The gradients of W' and m for G = dL/dV, with `norm` the forward's, ν = ‖W'‖ + eps and
    /// r = Σ_c G ⊙ W' per row: dm = r / ν (m's shape), dW' = (m / ν)·(G − r·W' / (ν·‖W'‖))
    /// (the norm's own gradient included; 0 for a zero row's second term).
    fn weight_decompose_backward(
        &self,
        g: &Tensor,
        w: &Tensor,
        m: &Tensor,
        norm: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor)>;
}

/// Sinusoidal timestep embedding as diffusers' `get_timestep_embedding`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepEmbedding {
    pub dim: usize,
    /// Put the cosines first (SD1.x: true).
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` (SD1.x: 0).
    pub freq_shift: f64,
    /// 10000 in SD1.x.
    pub max_period: f64,
}

/// Diffusion-specific ops (cpu/diffusion.rs, cuda/ops/diffusion.rs).
pub trait DiffusionOps {
    /// Sinusoidal embedding of timesteps t [N] -> [N, dim].
    fn timestep_embedding(&self, t: &Tensor, p: TimestepEmbedding) -> Result<Tensor>;
    /// Per sample n of a batch [N, ...]: y_n = a[n]·x_n + b[n]·z_n. DDPM's forward process,
    /// x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε, with a and b chosen per sample's timestep.
    fn add_noise(&self, x: &Tensor, z: &Tensor, a: &[f64], b: &[f64]) -> Result<Tensor>;
    /// A draw from the VAE's diagonal Gaussian posterior, times the latent scale:
    /// scale·(mean + exp(logvar/2)·noise), logvar clamped to [-30, 20] as diffusers does;
    /// without noise, scale·mean.
    fn gaussian_sample(
        &self,
        mean: &Tensor,
        logvar: &Tensor,
        noise: Option<&Tensor>,
        scale: f64,
    ) -> Result<Tensor>;
    /// loss = (1/N) Σ_n w_n · mean((pred_n - target_n)²) over a batch [N, ...], and
    /// d(grad_scale · loss)/d pred. `weights` (min-SNR) defaults to all ones.
    fn mse_loss(
        &self,
        pred: &Tensor,
        target: &Tensor,
        weights: Option<&[f64]>,
        grad_scale: f64,
    ) -> Result<(f64, Tensor)>;
}

/// Hyper-parameters of one AdamW step (PyTorch's decoupled weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step count, for the bias corrections.
    pub step: u64,
    /// Multiplies every gradient before use: 1/loss_scale times the clipping coefficient.
    pub grad_scale: f64,
}

/// Hyper-parameters of one Lion step (lion-pytorch's update, decoupled weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lion {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    /// Multiplies every gradient before use: 1/loss_scale times the clipping coefficient.
    pub grad_scale: f64,
}

/// Hyper-parameters of one SGD step with Nesterov momentum (torch.optim.SGD, nesterov=True,
/// dampening 0, weight decay added to the gradient).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdNesterov {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Multiplies every gradient before use: 1/loss_scale times the clipping coefficient.
    pub grad_scale: f64,
}

/// The first half of a Prodigy step (prodigyopt's Prodigy): the moments and the running sum
/// `s` updated with the current estimate d, and the two sums the new d is made from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProdigyMoments {
    pub beta1: f64,
    pub beta2: f64,
    pub beta3: f64,
    /// The current estimate d.
    pub d: f64,
    /// Scale of the gradient added to `s`: (d/d0)·d·lr·bias-correction, or (d/d0)·d with
    /// safeguard_warmup.
    pub s_scale: f64,
    /// Weight decay added to the gradient (prodigyopt's `decouple=False`), else 0.
    pub coupled_decay: f64,
    /// Multiplies every gradient before use: 1/loss_scale times the clipping coefficient.
    pub grad_scale: f64,
}

/// The first half of a DAdaptAdam step (dadaptation's DAdaptAdam): the moments and `s`
/// updated at dlr = d·lr·bias-correction, and the sums the new d is made from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DAdaptMoments {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// d·lr·bias-correction with the current d.
    pub dlr: f64,
    /// Weight decay added to the gradient (`decouple=False`), else 0.
    pub coupled_decay: f64,
    /// Multiplies every gradient before use: 1/loss scale times the clipping coefficient.
    pub grad_scale: f64,
}

/// The two sums of [`OptimOps::prodigy_moments`] and [`OptimOps::dadapt_moments`], each added
/// in a fixed order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProdigySums {
    /// Prodigy: Σ g·(p0 − p); DAdaptAdam: Σ g·s/(sqrt(v) + eps) with s and v before the
    /// step; over the gradient as used (scaled, with coupled decay).
    pub dot: f64,
    /// Σ |s| over the updated `s`.
    pub s_abs: f64,
}

/// The second half of a Prodigy step: p ← p·(1 − decay·dlr) − dlr·m / (sqrt(v) + d·eps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProdigyUpdate {
    /// d·lr·bias-correction with the d the moments were updated with.
    pub dlr: f64,
    /// The new d times ε.
    pub d_eps: f64,
    /// Decoupled weight decay (0 with `decouple=False`).
    pub decay: f64,
}

/// The optimizer's ops on the flat parameter buffer (cpu/optim.rs, cuda/ops/optim.rs).
pub trait OptimOps {
    /// Σ x²: the squared gradient norm for clipping; not finite when an f16 step overflowed.
    fn sum_squares(&self, x: &Tensor) -> Result<f64>;
    /// One AdamW step, in place, on flat f32 buffers of equal length.
    fn adamw_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: &AdamW,
    ) -> Result<()>;
    /// One Lion step, in place: c = β1·m + (1−β1)·g; p ← p·(1 − lr·wd) − lr·sign(c);
    /// m ← β2·m + (1−β2)·g.
    fn lion_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: &mut Tensor,
        h: &Lion,
    ) -> Result<()>;
    /// One SGD step with Nesterov momentum, in place: g ← g + wd·p; b ← μ·b + g;
    /// p ← p − lr·(g + μ·b).
    fn sgd_nesterov_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        buf: &mut Tensor,
        h: &SgdNesterov,
    ) -> Result<()>;
    /// Prodigy's first half, in place on m, v, s: g ← gs·grad + coupled·p;
    /// m ← β1·m + d(1−β1)·g; v ← β2·v + d²(1−β2)·g²; s ← β3·s + s_scale·g; returns
    /// Σ g·(p0 − p) and Σ|s|, each summed per fixed chunk in f64 and the chunks added in
    /// order (deterministic).
    fn prodigy_moments(
        &self,
        t: ProdigyBuffers<'_>,
        grads: &Tensor,
        h: &ProdigyMoments,
    ) -> Result<ProdigySums>;
    /// One AdamW8bit step (bitsandbytes' blockwise 8-bit Adam with decoupled decay), in
    /// place: per block of [`quant::QUANT_BLOCK`], m and v dequantised, updated as AdamW's,
    /// their new absmax taken, p ← (p − lr·m̂/(sqrt(v̂) + eps)) · (1 − lr·wd) (decay after
    /// the step, as bitsandbytes' kernel), and m, v requantised (cpu/optim8.rs).
    fn adamw8bit_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        v: Quantized<'_>,
        h: &AdamW,
    ) -> Result<()>;
    /// One Lion8bit step (bitsandbytes' blockwise 8-bit Lion), in place: Lion's update with
    /// its momentum dequantised per block, then requantised (cpu/optim8.rs).
    fn lion8bit_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        m: Quantized<'_>,
        h: &Lion,
    ) -> Result<()>;
    /// DAdaptAdam's first half, in place on m, v, s: g ← gs·grad + coupled·p;
    /// dot = Σ g·s/(sqrt(v) + eps) (the old s, v); m ← β1·m + dlr(1−β1)·g;
    /// v ← β2·v + (1−β2)·g²; s ← sqrt(β2)·s + dlr(1−sqrt(β2))·g; returns dot and Σ|s|, each
    /// summed per fixed chunk in f64 and the chunks added in order. (Its second half is
    /// [`OptimOps::prodigy_update`] with dlr 1 and ε: p ← p·(1 − wd·dlr) − m/(sqrt(v) + eps).)
    fn dadapt_moments(
        &self,
        t: DAdaptBuffers<'_>,
        grads: &Tensor,
        h: &DAdaptMoments,
    ) -> Result<ProdigySums>;
    /// One Adafactor step over every tensor of `table`, in place on params and the buffers
    /// (the formulas on [`AdafactorStep`]); returns the rate applied to the first tensor
    /// (what transformers' AdafactorSchedule reports). Per-tensor sums are taken in f64 in a
    /// fixed order (deterministic).
    fn adafactor_step(
        &self,
        params: &mut Tensor,
        grads: &Tensor,
        table: &AdafactorTable,
        t: AdafactorBuffers<'_>,
        h: &AdafactorStep,
    ) -> Result<f64>;
    /// Prodigy's second half, in place on params.
    fn prodigy_update(
        &self,
        params: &mut Tensor,
        m: &Tensor,
        v: &Tensor,
        h: &ProdigyUpdate,
    ) -> Result<()>;
}

/// The buffers of [`OptimOps::dadapt_moments`]: params read, m, v and s updated.
pub struct DAdaptBuffers<'a> {
    pub params: &'a Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
    pub s: &'a mut Tensor,
}

/// The buffers of [`OptimOps::prodigy_moments`]: params and p0 read, m, v and s updated.
pub struct ProdigyBuffers<'a> {
    pub params: &'a Tensor,
    pub p0: &'a Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
    pub s: &'a mut Tensor,
}

/// One 8-bit blockwise state tensor (bitsandbytes' layout): a byte code per parameter (u8
/// [n]), the absmax of each block of [`quant::QUANT_BLOCK`] (f32 [blocks]), and the map
/// (f32 [256], [`quant::dynamic_map`]) a code indexes: value = map[code]·absmax.
pub struct Quantized<'a> {
    pub codes: &'a mut Tensor,
    pub absmax: &'a mut Tensor,
    pub map: &'a Tensor,
}
