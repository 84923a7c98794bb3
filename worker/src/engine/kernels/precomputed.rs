//! One graph node type for every kernel that computes its output before entering candle's
//! graph: the kernel runs once (keeping what its backward needs), and the node only hands
//! that output over and runs the backward it was given.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::msg;

/// Gradients of a two-input node, `None` for an input that needs none.
pub(super) type Grads2 = (Option<Tensor>, Option<Tensor>);

/// Gradients of a three-input node, `None` for an input that needs none.
pub(super) type Grads3 = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// A node whose forward returns `out` (computed beforehand, handed over once) with `shape`,
/// and whose backward is `bwd`, called with the node's inputs and the output gradient. It
/// is a [`CustomOp1`], [`CustomOp2`] or [`CustomOp3`] by the arity of `bwd`.
pub(super) struct Precomputed<F> {
    name: &'static str,
    out: Mutex<Option<CpuStorage>>,
    shape: Shape,
    bwd: F,
}

impl<F> Precomputed<F> {
    fn new(name: &'static str, out: CpuStorage, shape: Shape, bwd: F) -> Self {
        Self {
            name,
            out: Mutex::new(Some(out)),
            shape,
            bwd,
        }
    }

    fn take(&self) -> Result<(CpuStorage, Shape)> {
        let out = self
            .out
            .lock()
            .map_err(|_| msg(format!("{}: poisoned", self.name)))?
            .take()
            .ok_or_else(|| msg(format!("{}: output already taken", self.name)))?;
        Ok((out, self.shape.clone()))
    }
}

impl<F> Precomputed<F>
where
    F: Fn(&Tensor, &Tensor) -> Result<Option<Tensor>> + Send + Sync,
{
    /// A one-input node; `bwd(x, g)` returns `dL/dx`.
    pub(super) fn unary(name: &'static str, out: CpuStorage, shape: Shape, bwd: F) -> Self {
        Self::new(name, out, shape, bwd)
    }
}

impl<F> Precomputed<F>
where
    F: Fn(&Tensor, &Tensor, &Tensor) -> Result<Grads2> + Send + Sync,
{
    /// A two-input node; `bwd(x, y, g)` returns `(dL/dx, dL/dy)`.
    pub(super) fn binary(name: &'static str, out: CpuStorage, shape: Shape, bwd: F) -> Self {
        Self::new(name, out, shape, bwd)
    }
}

impl<F> Precomputed<F>
where
    F: Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Grads3> + Send + Sync,
{
    /// A three-input node; `bwd(x, y, z, g)` returns the three input gradients.
    pub(super) fn ternary(name: &'static str, out: CpuStorage, shape: Shape, bwd: F) -> Self {
        Self::new(name, out, shape, bwd)
    }
}

impl<F> CustomOp1 for Precomputed<F>
where
    F: Fn(&Tensor, &Tensor) -> Result<Option<Tensor>> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.take()
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        (self.bwd)(x, g)
    }
}

impl<F> CustomOp2 for Precomputed<F>
where
    F: Fn(&Tensor, &Tensor, &Tensor) -> Result<Grads2> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.take()
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Grads2> {
        (self.bwd)(x, y, g)
    }
}

impl<F> CustomOp3 for Precomputed<F>
where
    F: Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Grads3> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.take()
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, z: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Grads3> {
        (self.bwd)(x, y, z, g)
    }
}
