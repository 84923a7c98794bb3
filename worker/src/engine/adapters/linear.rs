//! The adapter-capable linear layer: a frozen base weight plus optional trainable
//! LoRA/DoRA parameters, with merge/unmerge for export.

use candle_core::{D, DType, Result, Tensor, Var};

use super::Mode;
use super::dropout;
use crate::engine::kernels;

/// Trainable low-rank parameters attached to one linear layer, following PEFT's
/// `LoraLayer`: `y = W x + b + s · B(A(dropout(x)))`, or DoRA's magnitude-rescaled form.
#[derive(Debug, Clone)]
pub struct Lora {
    /// PEFT module key, e.g. `base_model.model.model.layers.0.self_attn.q_proj`.
    pub key: String,
    /// `lora_A.weight` `[r, in]`.
    pub a: Var,
    /// `lora_B.weight` `[out, r]`.
    pub b: Var,
    /// DoRA `lora_magnitude_vector` `[out]`.
    pub magnitude: Option<Var>,
    /// `alpha / r`, or `alpha / sqrt(r)` for rsLoRA.
    pub scale: f64,
    pub dropout: f32,
}

impl Lora {
    /// `s · B · A`, the low-rank weight update `[out, in]`.
    pub fn delta_weight(&self) -> Result<Tensor> {
        low_rank_delta(self.a.as_tensor(), self.b.as_tensor(), self.scale)
    }
}

/// `scale · B · A` for factors `A` `[r, in]` and `B` `[out, r]`.
pub fn low_rank_delta(a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    b.matmul(a)? * scale
}

/// IA3 (PEFT `IA3Layer`): a learned vector rescaling the layer's output (`[out, 1]`), or
/// its input for feed-forward modules (`[1, in]`). Starts at ones (identity).
#[derive(Debug, Clone)]
pub struct Ia3 {
    /// PEFT module key, e.g. `base_model.model.model.layers.0.self_attn.k_proj`.
    pub key: String,
    /// `ia3_l`: `[out, 1]`, or `[1, in]` when `on_input`.
    pub l: Var,
    pub on_input: bool,
}

/// A linear layer whose base weight `[out, in]` is a plain (frozen) tensor.
#[derive(Debug, Clone)]
pub struct AdaptedLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<Lora>,
    ia3: Option<Ia3>,
    /// The base weight from before [`Self::merge`], restored exactly by [`Self::unmerge`].
    unmerged: Option<Tensor>,
    /// The bias from before an IA3 merge (output scaling rescales the bias too).
    unmerged_bias: Option<Option<Tensor>>,
}

impl AdaptedLinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            ia3: None,
            unmerged: None,
            unmerged_bias: None,
        }
    }

    pub fn ia3(&self) -> Option<&Ia3> {
        self.ia3.as_ref()
    }

    /// Attaches (or replaces) an IA3 vector.
    pub fn attach_ia3(&mut self, ia3: Ia3) {
        self.ia3 = Some(ia3);
    }

    /// Replaces the bias (BitFit and full fine-tuning swap in a trainable `Var`'s tensor).
    pub fn set_bias(&mut self, bias: Option<Tensor>) {
        self.bias = bias;
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }

    /// The weight when [`Self::forward`] is exactly `x Wᵀ` with `W` a constant: no adapter
    /// in effect (none attached, or merged), no bias, and no gradient flowing to `W`.
    pub fn frozen_weight(&self) -> Option<&Tensor> {
        let adapted = self.unmerged.is_none() && (self.lora.is_some() || self.ia3.is_some());
        (!adapted && self.bias.is_none() && !self.weight.track_op()).then_some(&self.weight)
    }

    pub fn is_merged(&self) -> bool {
        self.unmerged.is_some()
    }

    /// Attaches (or replaces) the adapter.
    pub fn attach(&mut self, lora: Lora) {
        self.lora = Some(lora);
    }

    /// Removes the adapter, returning it (and restoring the base weight if merged).
    pub fn detach(&mut self) -> Option<Lora> {
        self.unmerge();
        self.lora.take()
    }

    /// Replaces the frozen base weight (PiSSA-style inits rewrite it to the residual).
    pub fn set_base_weight(&mut self, weight: Tensor) {
        self.weight = weight;
    }

    /// Folds the adapter into the base weight; the forward pass then ignores the adapter.
    /// LoRA: `W' = W + sBA`; DoRA: `W' = m / ‖W + sBA‖_row · (W + sBA)`.
    /// IA3: `W' = diag(l)·W`, `b' = l·b` (output scaling) or `W' = W·diag(l)` (input).
    pub fn merge(&mut self) -> Result<()> {
        if self.unmerged.is_some() {
            return Ok(());
        }
        if let Some(ia3) = &self.ia3 {
            let l = ia3.l.as_tensor().to_dtype(self.weight.dtype())?.detach();
            let merged = self.weight.broadcast_mul(&l)?;
            let bias = match (&self.bias, ia3.on_input) {
                (Some(b), false) => Some(b.broadcast_mul(&l.flatten_all()?)?),
                (b, _) => b.clone(),
            };
            self.unmerged_bias = Some(std::mem::replace(&mut self.bias, bias));
            self.unmerged = Some(std::mem::replace(&mut self.weight, merged));
            return Ok(());
        }
        let Some(lora) = &self.lora else {
            return Ok(());
        };
        let merged = merged_weight(&self.weight, lora)?;
        self.unmerged = Some(std::mem::replace(&mut self.weight, merged));
        Ok(())
    }

    /// Undoes [`Self::merge`], bit-exactly (the original weight was kept).
    pub fn unmerge(&mut self) {
        if let Some(w) = self.unmerged.take() {
            self.weight = w;
        }
        if let Some(b) = self.unmerged_bias.take() {
            self.bias = b;
        }
    }

    /// `x` `[..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        match &self.ia3 {
            Some(ia3) if self.unmerged.is_none() && mode.adapters_on() => {
                let l = mode.read(&ia3.l).flatten_all()?.to_dtype(x.dtype())?;
                if ia3.on_input {
                    self.forward_inner(&x.broadcast_mul(&l)?, mode)
                } else {
                    self.forward_inner(x, mode)?.broadcast_mul(&l)
                }
            }
            _ => self.forward_inner(x, mode),
        }
    }

    fn forward_inner(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let lora = match &self.lora {
            Some(l) if self.unmerged.is_none() && mode.adapters_on() => l,
            _ => return add_bias(matmul_t(x, &self.weight)?, self.bias.as_ref()),
        };
        let wd = lora.a.dtype();
        let (a, b) = (mode.read(&lora.a), mode.read(&lora.b));
        let dropped = match mode.dropout_stream(&lora.key, lora.dropout) {
            Some(rng) => Some(dropout::apply(x, lora.dropout, rng)?),
            None => None,
        };
        if dropped.is_none()
            && lora.magnitude.is_none()
            && kernels::supported(x)
            && wd == x.dtype()
            && self.weight.dtype() == x.dtype()
            && self.weight.device().is_cpu()
        {
            // Plain LoRA: base product, low-rank update and all three gradients in one node.
            let dims = x.dims().to_vec();
            let in_f = dims.last().copied().unwrap_or(0);
            let x2 = x.reshape((x.elem_count() / in_f.max(1), in_f))?;
            let y = kernels::lora_linear(&x2, &self.weight, &a, &b, lora.scale)?;
            let mut out = dims;
            if let Some(last) = out.last_mut() {
                *last = y.dim(1)?;
            }
            return add_bias(y.reshape(out)?, self.bias.as_ref());
        }
        let base = matmul_t(x, &self.weight)?;
        let xa = dropped.as_ref().unwrap_or(x).to_dtype(wd)?;
        let delta = (matmul_t(&matmul_t(&xa, &a)?, &b)? * lora.scale)?;
        let update = match &lora.magnitude {
            None => delta,
            Some(m) => {
                // PEFT dora.py: (m/‖W+sBA‖ - 1) · (x Wᵀ) + (m/‖W+sBA‖) · s·x AᵀBᵀ, the norm
                // detached (DoRA paper §4.3). With dropout, x Wᵀ uses the dropped input too.
                let w = self.weight.to_dtype(wd)?;
                let norm = row_norm(&(w.clone() + lora.delta_weight()?)?)?.detach();
                let mag = mode.read(m).broadcast_div(&norm)?;
                let base_x = match &dropped {
                    Some(_) => matmul_t(&xa, &w)?,
                    None => base.to_dtype(wd)?,
                };
                (base_x.broadcast_mul(&(mag.clone() - 1.0)?)? + delta.broadcast_mul(&mag)?)?
            }
        };
        add_bias(
            (base + update.to_dtype(self.weight.dtype())?)?,
            self.bias.as_ref(),
        )
    }
}

/// The merged weight for `lora` on top of `weight`, in the base dtype.
pub fn merged_weight(weight: &Tensor, lora: &Lora) -> Result<Tensor> {
    let magnitude = lora.magnitude.as_ref().map(|m| m.as_tensor());
    merge_delta(weight, &lora.delta_weight()?, magnitude)
}

/// `W + ΔW` computed in `ΔW`'s dtype (DoRA: rescaled to `magnitude` row norms), detached and
/// back in `W`'s dtype: the one merge of an update into a base weight.
pub fn merge_delta(weight: &Tensor, delta: &Tensor, magnitude: Option<&Tensor>) -> Result<Tensor> {
    let w = (weight.to_dtype(delta.dtype())? + delta)?;
    let w = match magnitude {
        None => w,
        Some(m) => {
            let scale = m.broadcast_div(&row_norm(&w)?)?;
            w.broadcast_mul(&scale.unsqueeze(1)?)?
        }
    };
    w.detach().to_dtype(weight.dtype())
}

/// L2 norm of each row of `[out, in]` → `[out]`.
pub fn row_norm(w: &Tensor) -> Result<Tensor> {
    w.sqr()?.sum(D::Minus1)?.sqrt()
}

/// `x Wᵀ` for `x` of any rank ≥ 2, flattened to one 2-D matmul (faster than a
/// broadcast batched matmul on CPU).
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_f = dims.last().copied().unwrap_or(0);
    let rows = x.elem_count() / in_f.max(1);
    let x2 = x.reshape((rows, in_f))?;
    let y = if x2.track_op() && !w.track_op() && kernels::supported(&x2) {
        x2.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = y.dim(1)?;
    }
    y.reshape(out)
}

/// `x Wᵀ` for a constant `W` as a graph node whose backward computes only `dL/dx = g W`.
/// candle's matmul backward always computes `dL/dW` too — a second full GEMM per frozen
/// layer plus a zero-filled `[out, in]` gradient buffer — although nothing uses it. The
/// forward runs candle's CPU matmul directly on the storages (CPU only).
struct FrozenMatmul {
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = layout.shape().dims2()?;
        let (n, wk) = self.w.dims2()?;
        if wk != k {
            return Err(candle_core::Error::Msg(
                "frozen-matmul: shape mismatch".into(),
            ));
        }
        let (w_storage, w_layout) = self.w.storage_and_layout();
        match &*w_storage {
            candle_core::Storage::Cpu(w) => {
                // The product straight into this node's storage (no copy of a detached result).
                let wt = w_layout.transpose(0, 1)?;
                let y = storage.matmul(w, (1, m, n, k), layout, &wt)?;
                Ok((y, candle_core::Shape::from((m, n))))
            }
            _ => Err(candle_core::Error::Msg(
                "frozen-matmul: weight is not a CPU tensor".into(),
            )),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Adapters train in f32 even over bf16/f16 base weights (docs/engine-notes.md §1.5); an f64
/// base (used by gradient checks) keeps f64.
pub fn adapter_dtype(base: DType) -> DType {
    crate::engine::kernels::compute_dtype(base)
}
