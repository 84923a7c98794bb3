//! `tuna.v1.SweepService`: validation at the edge, the sweep as stored plus what its trials
//! say (best trial, Pareto front). The controller (`crate::sweeps`) does the driving.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};
use tuna_proto::v1 as pb;
use tuna_proto::v1::sweep_service_server::SweepService;

use super::{
    ApiContext, caller, convert, page_token, require_dataset, require_id, require_method_fits_model,
};
use crate::domain::{JobState, SweepState, ids};
use crate::error::ApiError;
use crate::store::{Cursor, JobFilter, StoreError, SweepRecord, TrialRecord};
use crate::sweeps::{SweepPlan, ranking};

/// The sweep service.
pub struct Sweeps {
    ctx: ApiContext,
}

impl Sweeps {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

/// States of every trial job of a sweep.
async fn trial_job_states(
    ctx: &ApiContext,
    sweep_id: &str,
) -> Result<HashMap<String, JobState>, ApiError> {
    let filter = JobFilter {
        sweep_id: Some(sweep_id.to_string()),
        ..Default::default()
    };
    let mut states = HashMap::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = ctx.store.list_jobs(&filter, after.as_ref(), 1000).await?;
        for j in &page {
            states.insert(j.id.clone(), j.state);
        }
        match page.last() {
            Some(last) if page.len() == 1000 => {
                after = Some(Cursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                })
            }
            _ => break,
        }
    }
    Ok(states)
}

fn sweep_state(s: SweepState) -> pb::SweepState {
    match s {
        SweepState::Running => pb::SweepState::Running,
        SweepState::Succeeded => pb::SweepState::Succeeded,
        SweepState::Failed => pb::SweepState::Failed,
        SweepState::Cancelled => pb::SweepState::Cancelled,
    }
}

/// `full_steps`: the template's step budget when it has one. A stop decision that reached a
/// run only after its last step does not make it "stopped early".
fn trial_proto(
    t: &TrialRecord,
    states: &HashMap<String, JobState>,
    full_steps: Option<i64>,
) -> pb::Trial {
    let planned = t.budget.map(|b| b.round() as i64).or(full_steps);
    pb::Trial {
        trial: t.trial,
        run: t.run,
        job_id: t.job_id.clone().unwrap_or_default(),
        job_state: t
            .job_id
            .as_ref()
            .and_then(|j| states.get(j))
            .map_or(pb::JobState::Unspecified, |s| convert::job_state(*s))
            as i32,
        params_json: t.params.clone(),
        budget: t.budget.unwrap_or(0.0),
        observed: t.observed,
        objective: t.objective,
        cost: t.cost,
        failed: t.failed,
        stopped_early: t.stop_requested && planned.is_none_or(|p| t.steps < p),
        steps: t.steps,
        last_value: t.last_value,
    }
}

fn job_ended(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

/// The sweep with its derived summary (counts, cost, best trial, Pareto front) and its trials.
async fn snapshot(
    ctx: &ApiContext,
    rec: &SweepRecord,
) -> Result<(pb::Sweep, Vec<pb::Trial>), ApiError> {
    let spec = pb::SweepSpec::decode(rec.spec.as_slice()).map_err(|e| {
        ApiError::Store(StoreError::Corrupt {
            table: "sweeps",
            detail: format!("spec: {e}"),
        })
    })?;
    let maximize = spec
        .objective
        .as_ref()
        .is_some_and(|o| o.direction == pb::Direction::Maximize as i32);
    let full_steps = spec
        .template
        .as_ref()
        .and_then(|t| t.hyperparameters.as_ref())
        .and_then(|h| h.max_steps);
    let records = ctx.store.list_trials(&rec.id).await?;
    let states = trial_job_states(ctx, &rec.id).await?;
    let trials: Vec<pb::Trial> = records
        .iter()
        .filter(|t| t.job_id.is_some())
        .map(|t| trial_proto(t, &states, full_steps))
        .collect();
    // Finished, successful runs in (trial, run) order, the order ranking's ties follow.
    let mut done: Vec<(&pb::Trial, f64)> = trials
        .iter()
        .filter(|t| t.observed && !t.failed)
        .filter_map(|t| t.objective.map(|v| (t, v)))
        .collect();
    done.sort_by_key(|(t, _)| (t.trial, t.run));
    let best_trial = ranking::best(done.iter().copied(), maximize).map(|(t, _)| t.clone());
    let pareto_front = ranking::pareto_front(
        done.iter()
            .map(|&(t, v)| (t, v, t.cost.unwrap_or_default())),
        maximize,
    )
    .into_iter()
    .cloned()
    .collect();
    let sweep = pb::Sweep {
        id: rec.id.clone(),
        state: sweep_state(rec.state) as i32,
        spec: Some(spec),
        message: rec.message.clone(),
        trials_created: trials.iter().filter(|t| t.run == 0).count() as i32,
        trials_finished: trials.iter().filter(|t| t.observed).count() as i32,
        // A run whose job already ended waits for the controller's next tick, not a worker.
        trials_running: trials
            .iter()
            .filter(|t| !t.observed && !job_ended(t.job_state))
            .count() as i32,
        total_cost: trials.iter().filter_map(|t| t.cost).sum(),
        best_trial,
        pareto_front,
        created_at: Some(tuna_proto::ts_from_ms(rec.created_at)),
        updated_at: Some(tuna_proto::ts_from_ms(rec.updated_at)),
        finished_at: rec.finished_at.map(tuna_proto::ts_from_ms),
        request_id: rec.request_id.clone().unwrap_or_default(),
    };
    Ok((sweep, trials))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::SweepSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl SweepService for Sweeps {
    #[tracing::instrument(skip_all)]
    async fn create_sweep(
        &self,
        request: Request<pb::CreateSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let plan = SweepPlan::from_proto(req.spec.as_ref()).map_err(ApiError::from)?;
        if req.request_id.len() > 128 {
            return Err(ApiError::field("request_id", "must be at most 128 characters").into());
        }
        let t = &plan.template;
        // The template passed JobSpec validation, so its task is empty (the default) or known.
        let task = crate::domain::spec::Task::parse(&t.task)
            .unwrap_or(crate::domain::spec::Task::CausalLm);
        if task == crate::domain::spec::Task::Merge {
            return Err(ApiError::field(
                "spec.template.task",
                "a sweep's trials train; merge finished jobs with a merge job instead",
            )
            .into());
        }
        if let Err(v) =
            crate::sweeps::final_merge::parse(req.spec.as_ref().unwrap_or(&Default::default()))
        {
            return Err(ApiError::field(&v.field, v.description).into());
        }
        if t.replicas > 1 {
            return Err(ApiError::field(
                "spec.template.replicas",
                "sweep trials run on one worker each; lo-fi replicas are for single jobs",
            )
            .into());
        }
        require_dataset(
            &self.ctx,
            &caller,
            "spec.template.training_file",
            &t.training_file,
            task,
        )
        .await?;
        if !t.validation_file.is_empty() {
            require_dataset(
                &self.ctx,
                &caller,
                "spec.template.validation_file",
                &t.validation_file,
                task,
            )
            .await?;
        }
        // Every method the sweep may run must fit its model: the template's, and any a
        // `method.type` parameter can choose.
        let mut methods: Vec<(String, &str)> = vec![(
            "spec.template.method.type".into(),
            t.method.as_ref().map_or("", |m| m.r#type.as_str()),
        )];
        for (i, p) in plan.space.params().iter().enumerate() {
            if let (true, crate::search::Domain::Categorical(choices)) =
                (p.name == "method.type", &p.domain)
            {
                for (j, c) in choices.iter().enumerate() {
                    methods.push((format!("spec.parameters[{i}].choices[{j}]"), c.as_str()));
                }
            }
        }
        // Each method once (the check may read the model's headers), named by its first field.
        let mut checked = Vec::new();
        for (field, name) in methods {
            if let Some(kind) = crate::domain::spec::MethodKind::parse(name)
                && !checked.contains(&kind)
            {
                checked.push(kind);
                require_method_fits_model(&self.ctx, &caller, &field, t.base_model.trim(), kind)
                    .await?;
            }
        }
        let bytes = plan.proto.encode_to_vec();
        let request_id = (!req.request_id.is_empty()).then_some(req.request_id.as_str());
        let (rec, created) = self
            .ctx
            .store
            .create_sweep(&caller.tenant, &bytes, request_id)
            .await?;
        tracing::info!(sweep = %rec.id, created, algorithm = %plan.algorithm, "create sweep");
        Ok(Response::new(snapshot(&self.ctx, &rec).await?.0))
    }

    async fn get_sweep(
        &self,
        request: Request<pb::GetSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("id", ids::SWEEP, &req.id)?;
        let rec = self.ctx.sweep(&caller, &req.id).await?;
        Ok(Response::new(snapshot(&self.ctx, &rec).await?.0))
    }

    async fn list_sweeps(
        &self,
        request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit =
            page_token::page_size("page_size", req.page_size, page_token::DEFAULT_PAGE_SIZE)?;
        let canon = "sweeps";
        let after = page_token::decode(&req.page_token, canon)?;
        let mut recs = self
            .ctx
            .store
            .list_sweeps(&caller.tenant, after.as_ref(), limit + 1)
            .await?;
        let more = recs.len() > limit as usize;
        recs.truncate(limit as usize);
        let next_page_token = match recs.last() {
            Some(last) if more => page_token::encode(
                &Cursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                },
                canon,
            ),
            _ => String::new(),
        };
        let mut sweeps = Vec::with_capacity(recs.len());
        for r in &recs {
            sweeps.push(snapshot(&self.ctx, r).await?.0);
        }
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps,
            next_page_token,
        }))
    }

    async fn list_trials(
        &self,
        request: Request<pb::ListTrialsRequest>,
    ) -> Result<Response<pb::ListTrialsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("sweep_id", ids::SWEEP, &req.sweep_id)?;
        let rec = self.ctx.sweep(&caller, &req.sweep_id).await?;
        let (_, trials) = snapshot(&self.ctx, &rec).await?;
        Ok(Response::new(pb::ListTrialsResponse { trials }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_sweep(
        &self,
        request: Request<pb::CancelSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("id", ids::SWEEP, &req.id)?;
        let store = &self.ctx.store;
        self.ctx.sweep(&caller, &req.id).await?;
        let rec = store.cancel_sweep(&req.id).await?;
        // The controller no longer touches a cancelled sweep; its trials are cancelled here.
        for (job, state) in trial_job_states(&self.ctx, &req.id).await? {
            if state.is_terminal() {
                continue;
            }
            match store.cancel_job(&job).await {
                Ok(_) | Err(StoreError::InvalidTransition { .. }) => {}
                Err(e) => return Err(ApiError::from(e).into()),
            }
        }
        tracing::info!(sweep = %rec.id, "sweep cancelled");
        Ok(Response::new(snapshot(&self.ctx, &rec).await?.0))
    }

    type WatchSweepStream = WatchStream;

    async fn watch_sweep(
        &self,
        request: Request<pb::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        require_id("id", ids::SWEEP, &req.id)?;
        let ctx = self.ctx.clone();
        ctx.sweep(&caller, &req.id).await?;
        let poll = Duration::from_millis(ctx.limits.poll_interval_ms.min(1000));
        let mut stopping = ctx.shutdown.clone();
        let id = req.id;
        let stream = async_stream::try_stream! {
            let mut last: Option<pb::SweepSnapshot> = None;
            loop {
                let rec = ctx.store.get_sweep(&id).await?;
                let (sweep, trials) = snapshot(&ctx, &rec).await?;
                let snap = pb::SweepSnapshot { sweep: Some(sweep), trials };
                // Ignore updated_at-only changes: a snapshot is sent when something a viewer
                // sees changed.
                if last.as_ref() != Some(&snap) {
                    last = Some(snap.clone());
                    yield snap;
                }
                let settled = rec.state.is_terminal()
                    && last.as_ref().is_some_and(|s| {
                        s.trials.iter().all(|t| {
                            pb::JobState::try_from(t.job_state).is_ok_and(|st| {
                                matches!(
                                    st,
                                    pb::JobState::Succeeded
                                        | pb::JobState::Failed
                                        | pb::JobState::Cancelled
                                )
                            })
                        })
                    });
                if settled {
                    break;
                }
                let stop = tokio::select! {
                    _ = tokio::time::sleep(poll) => false,
                    _ = stopping.wait_for(|s| *s) => true,
                };
                if stop {
                    Err(Status::unavailable("server shutting down; watch again"))?;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
