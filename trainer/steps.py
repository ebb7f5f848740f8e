"""One optimizer step of everything the trainer trains, on this process's share of the step's global batch:
the two pretraining stages (:func:`tokenizer_step`, :func:`transformer_step`), the learned baselines
(:func:`baseline_step`) and the movie decoder (:func:`movie_step`). The loop around them is
:class:`trainer.loop.TrainingLoop`; the backward pass of all of them is :func:`backward_step`.

Every step follows one rule, so that one process, N processes and gradient accumulation all train on
the same loss: every process draws the whole global batch with the shared data generator and reads
only its own rows (:class:`trainer.distributed.Sharding`); each part of the loss is a sum over rows
divided by a number that does not depend on the weights (a count of targets, copy-last's squared error
per horizon step, the batch size), and that divisor is taken over the whole global batch before the
backward pass. Each micro-batch's loss is then its share of the global loss: its gradients, accumulated
over micro-batches and summed over processes (:func:`trainer.distributed.all_reduce_gradients`), are
exactly the gradient of the whole batch's loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rtcalm.model import Calm
from rtcalm.model.encoder import copy_last_ratio_loss
from rtcalm.model.objectives import future_targets, masked_positions, next_code_targets
from trainer.config import TransformerStage
from trainer.data import CropSampler, TokenWindowSampler, interleave, missing_frames
from trainer.distributed import Precision, Sharding, all_reduce_gradients, gather_global_rows, single_process

# --- the backward pass -----------------------------------------------------------------------------------

def backward_step(sharding: Sharding, precision: Precision, optimizer: torch.optim.Optimizer,
                  micro_batch_loss: Callable[[int], tuple[torch.Tensor, object]], grad_clip: float = 0.0) -> list:
    """The trainer's one backward pass and optimizer step. For each of this process's micro-batches
    ``m``, ``micro_batch_loss(m)`` returns (its share of the global batch's loss, anything to keep), run
    under the precision's autocast; its gradients accumulate; then they are summed over the processes,
    clipped to ``grad_clip`` (0: no clipping), and the optimizer steps. Returns what each micro-batch
    kept, in order."""
    kept = []
    for m in range(sharding.accumulation_steps):
        with precision.autocast():
            loss, keep = micro_batch_loss(m)
        precision.backward(loss)
        kept.append(keep)
    parameters = [p for g in optimizer.param_groups for p in g["params"]]
    all_reduce_gradients(sharding.runtime, parameters)
    precision.step(optimizer, parameters, grad_clip)
    optimizer.zero_grad(set_to_none=True)
    return kept


# --- stage 1: tokenizer ----------------------------------------------------------------------------------


def autoencode(tokenizer, encoder_input: torch.Tensor):
    """The tokenizer's trainable path (encoder -> nearest code -> decoder, straight-through) *without*
    :meth:`TraceTokenizer.forward`'s codebook side effects: the EMA update and dead-code restarts must see
    the whole global batch, so :func:`tokenizer_step` gathers the encoder outputs and updates once."""
    latent = tokenizer.encode_latent(encoder_input).float()
    with torch.autocast(device_type=latent.device.type, enabled=False):  # code assignment in float32
        codes = tokenizer.nearest_codes(latent)
        quantised = F.embedding(codes, tokenizer.codebook)
    commitment_sum = (latent - quantised).square().sum()
    reconstruction = tokenizer.decoder(latent + (quantised - latent).detach())
    return reconstruction.float(), latent.detach(), codes, commitment_sum


def broadcast_tokenizer_buffers(sharding: Sharding, tokenizer) -> None:
    """Rank 0's codebook everywhere: every rank computed the same update from the same gathered batch,
    so this only removes any last-bit difference a non-deterministic GPU kernel could introduce."""
    for buffer in (tokenizer.codebook, tokenizer.ema_cluster_size, tokenizer.ema_code_sum, tokenizer.initialised):
        sharding.runtime.broadcast_(buffer)


def tokenizer_step(sharding: Sharding, precision: Precision, model: Calm, optimizer: torch.optim.Optimizer,
                   sampler: TokenWindowSampler, generator: torch.Generator,
                   batch_windows: int, missing_probability: float, stream_start_probability: float) -> dict:
    """One optimizer step of stage 1: masked reconstruction MSE + commitment loss of the global batch.
    Returns the step's global reconstruction MSE, commitment loss and their sum, "loss" (identical on
    every rank)."""
    rt, accumulation = sharding.runtime, sharding.accumulation_steps
    tokenizer = model.tokenizer
    b = sharding.micro_batch(batch_windows, "tokenizer.batch_windows")
    rows = sharding.rows(batch_windows, "tokenizer.batch_windows")
    values = sampler.sample(batch_windows, generator, rows)
    # The missing-frame augmentation does not depend on the values: drawn for the whole batch, so that
    # the observed count (the MSE's divisor) is the global one.
    missing_all = missing_frames(batch_windows, sampler.window, generator, missing_probability,
                                 stream_start_probability)
    observed_count = float((1.0 - missing_all).sum().clamp(min=1))
    missing = missing_all[rows]
    encoder_input = interleave(values, missing).to(rt.device)
    values, observed = values.to(rt.device), (1.0 - missing).to(rt.device)
    commitment_count = float(batch_windows * tokenizer.code_dim)

    if not bool(tokenizer.initialised):  # data init from the whole global batch, as TraceTokenizer.forward
        with torch.no_grad(), precision.autocast():
            latents = tokenizer.encode_latent(encoder_input).float()
        tokenizer._init_codebook_from(gather_global_rows(rt, latents, accumulation))
        broadcast_tokenizer_buffers(sharding, tokenizer)

    def micro_batch_loss(m: int):
        part = slice(m * b, (m + 1) * b)
        reconstruction, latent, code, commitment_sum = autoencode(tokenizer, encoder_input[part])
        squared_error = ((reconstruction - values[part]).square() * observed[part]).sum()
        loss = squared_error / observed_count + tokenizer.commitment_weight * commitment_sum / commitment_count
        return loss, (latent, code, torch.stack([squared_error.detach(), commitment_sum.detach()]).double())

    kept = backward_step(sharding, precision, optimizer, micro_batch_loss)
    # The codebook is a buffer the optimizer never touches: its EMA update follows the step.
    with torch.no_grad():
        tokenizer._ema_update(gather_global_rows(rt, torch.cat([latent for latent, _, _ in kept]), accumulation),
                              gather_global_rows(rt, torch.cat([code for _, code, _ in kept]), accumulation))
    broadcast_tokenizer_buffers(sharding, tokenizer)
    sums = rt.all_reduce_sum(sum(part_sums for _, _, part_sums in kept).to(rt.device)).cpu()
    mse = float(sums[0]) / observed_count
    commitment = tokenizer.commitment_weight * float(sums[1]) / commitment_count
    return {"loss": mse + commitment, "mse": mse, "commitment": commitment}


# --- stage 2: transformer --------------------------------------------------------------------------------

def next_code_weight(stage: TransformerStage, model: Calm | None = None) -> float:
    """The next-token cross-entropy belongs to the autoregressive objective only, and to models that
    have a tokenizer (encoder mode has no tokens to predict)."""
    if model is not None and model.config.input_mode == "encoder":
        return 0.0
    return stage.next_code_weight if stage.objective == "autoregressive" else 0.0


class TransformerObjective:
    """Stage 2's training loss under the configured objective (rtcalm.model.objectives: ``crop_losses``
    for "autoregressive" with the "mse" or "copy_last_ratio" forecast loss, ``latent_masked_losses`` for
    "latent_masked"), written as sums over the batch's rows divided by :meth:`divisors` of the whole
    global batch. With one process and one micro-batch it is the same arithmetic, operation for operation,
    so the single-process numbers are those of those functions."""

    def __init__(self, model: Calm, stage: TransformerStage):
        self.model, self.stage = model, stage
        self.context, self.horizon = stage.context_frames, model.config.forecast_horizon_frames
        self.latent = stage.objective == "latent_masked"
        self.code_weight = next_code_weight(stage, model)
        self.copy_last_ratio = not self.latent and stage.forecast_loss == "copy_last_ratio"
        # the latent masked objective scores every position (as latent_masked_losses)
        self.first_scored = 0 if self.latent else stage.first_scored_frame
        cfg = model.config
        # positions before first_scored_frame that no scored position attends to only feed raw windows
        self.window_only = max(0, self.first_scored - cfg.n_layers * (cfg.attention_window_frames - 1))
        if self.latent:
            self.hidden_steps = masked_positions(self.context, stage.masked_fraction)

    def scored_targets(self, crop: torch.Tensor):
        targets, mask = future_targets(crop, self.context, self.horizon)
        return targets[:, self.first_scored:], mask[:, self.first_scored:]

    def copy_last_weight(self, crop: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor):
        """copy_last_ratio_loss's weights (targets that exist and whose forecast origin exists, times the
        neuron's ΔF/F variance) and the copy-last forecast (B, scored, N)."""
        last = crop[:, :self.context][:, self.first_scored:]
        weight = (mask & torch.isfinite(last).unsqueeze(-1)).to(torch.float32) * scale.unsqueeze(-1).square()
        return weight, torch.nan_to_num(last)

    @torch.no_grad()
    def divisors(self, crop: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """This process's part of the loss's divisors (sum them over processes for the global ones)."""
        targets, mask = self.scored_targets(crop)
        out = {"forecast_mse": mask.sum()}
        if self.copy_last_ratio:
            weight, last = self.copy_last_weight(crop, mask, scale)
            out["copy_last_ratio"] = ((last.unsqueeze(-1) - targets).square() * weight).sum((0, 1, 2))  # (H,)
        if self.code_weight > 0:
            out["next_code_ce"] = torch.isfinite(crop[:, 1:self.context + 1])[:, self.window_only:].reshape(-1).to(
                torch.float32).sum()
        if self.latent:
            B, _, N = crop.shape
            out["latent_l1"] = torch.tensor(float(B * int(self.hidden_steps.sum()) * N * self.model.config.d_model))
        return out

    def loss(self, crop: torch.Tensor, model_input: torch.Tensor, scale: torch.Tensor,
             divisors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(this micro-batch's share of the global loss, its numerators (detached) for the step's report)."""
        if self.latent:
            return self.latent_masked(crop, model_input, divisors)
        out = self.model(model_input, with_code_logits=self.code_weight > 0, window_only_frames=self.window_only)
        targets, mask = self.scored_targets(crop)
        forecast = out.forecast.float()[:, self.first_scored - self.window_only:]
        squared_error = ((forecast - targets).square() * mask).sum()
        loss = squared_error / divisors["forecast_mse"].clamp(min=1)
        sums = {"forecast_mse": squared_error.detach()}
        if self.copy_last_ratio:
            weight, _ = self.copy_last_weight(crop, mask, scale)
            model_sse = ((forecast - targets).square() * weight).sum((0, 1, 2))  # (H,)
            loss = (model_sse / divisors["copy_last_ratio"].clamp(min=1e-12)).mean()
            sums["copy_last_ratio"] = model_sse.detach()
        if self.code_weight > 0:
            codes, code_mask = next_code_targets(self.model, crop, self.context)
            logits = out.next_code_logits.float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes[:, self.window_only:].reshape(-1),
                                 reduction="none")
            code_sum = (ce * code_mask[:, self.window_only:].reshape(-1).to(ce.dtype)).sum()
            loss = loss + self.code_weight * (code_sum / divisors["next_code_ce"].clamp(min=1))
            sums["next_code_ce"] = code_sum.detach()
        return loss, sums

    def latent_masked(self, crop, model_input, divisors):
        full = self.model(model_input)
        targets, mask = future_targets(crop, self.context, self.horizon)
        squared_error = ((full.forecast.float() - targets).square() * mask).sum()
        hidden_steps = self.hidden_steps.to(crop.device)
        masked = self.model(model_input.masked_fill(hidden_steps[None, :, None], float("nan")))
        l1 = F.l1_loss(masked.hidden[:, hidden_steps].float(), full.hidden[:, hidden_steps].detach().float(),
                       reduction="sum")
        loss = (squared_error / divisors["forecast_mse"].clamp(min=1)
                + self.stage.latent_weight * (l1 / divisors["latent_l1"]))
        return loss, {"forecast_mse": squared_error.detach(), "latent_l1": l1.detach()}

    def parts(self, sums: dict[str, torch.Tensor], divisors: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's loss and its parts, as crop_losses / latent_masked_losses report them."""
        parts = {"forecast_mse": float(sums["forecast_mse"] / divisors["forecast_mse"].clamp(min=1))}
        if self.latent:
            parts["latent_l1"] = float(sums["latent_l1"] / divisors["latent_l1"])
            parts["loss"] = parts["forecast_mse"] + self.stage.latent_weight * parts["latent_l1"]
            return parts
        loss = parts["forecast_mse"]
        if self.copy_last_ratio:
            parts["copy_last_ratio"] = loss = float(
                (sums["copy_last_ratio"] / divisors["copy_last_ratio"].clamp(min=1e-12)).mean())
        if self.code_weight > 0:
            parts["next_code_ce"] = float(sums["next_code_ce"] / divisors["next_code_ce"].clamp(min=1))
            loss += self.code_weight * parts["next_code_ce"]
        parts["loss"] = loss
        return parts


def transformer_step(sharding: Sharding, precision: Precision, objective: TransformerObjective,
                     optimizer: torch.optim.Optimizer, sampler: CropSampler, generator: torch.Generator) -> dict:
    """One optimizer step of stage 2. Returns the step's global loss parts (identical on every rank)."""
    rt, stage = sharding.runtime, objective.stage
    batch, context = stage.batch_crops, stage.context_frames
    b = sharding.micro_batch(batch, "transformer.batch_crops")
    rows = sharding.rows(batch, "transformer.batch_crops")
    crops, scale = sampler.sample(batch, generator, rows)
    model_input = crops[:, :context]
    if stage.missing_probability > 0:  # frame dropout, drawn for the whole batch; our rows of it
        dropped = torch.rand((batch, context, crops.shape[-1]), generator=generator) < stage.missing_probability
        model_input = model_input.masked_fill(dropped[rows], float("nan"))
    crops, model_input, scale = crops.to(rt.device), model_input.to(rt.device), scale.to(rt.device)

    divisors = {name: rt.all_reduce_sum(value.to(rt.device)) for name, value in objective.divisors(crops, scale).items()}

    def micro_batch_loss(m: int):
        part = slice(m * b, (m + 1) * b)
        return objective.loss(crops[part], model_input[part], scale, divisors)

    sums: dict[str, torch.Tensor] = {}
    for micro_sums in backward_step(sharding, precision, optimizer, micro_batch_loss, stage.grad_clip):
        for name, value in micro_sums.items():
            sums[name] = sums[name] + value if name in sums else value
    sums = {name: rt.all_reduce_sum(value) for name, value in sums.items()}
    return objective.parts(sums, divisors)


# --- the learned baselines -------------------------------------------------------------------------------

def window_batch(sampler: CropSampler, context: int, n_windows: int, generator: torch.Generator):
    """(windows (B, N, context), future (B, N, horizon), scale (N,)): one batch of crops of one epoch
    (trainer.data.CropSampler, all neurons up to max_neurons), laid out neuron-major for the baselines."""
    crops, scale = sampler.sample(n_windows, generator)
    crops = crops.transpose(1, 2)  # (B, N, context + horizon)
    return crops[..., :context], crops[..., context:], scale


def baseline_step(model, optimizer: torch.optim.Optimizer, sampler: CropSampler, generator: torch.Generator,
                  context: int, n_windows: int) -> dict:
    """One optimizer step of a learned baseline (rtcalm.model.baselines), in one process on the whole
    batch: the mean over horizon steps of its squared error over copy-last's
    (:func:`rtcalm.model.encoder.copy_last_ratio_loss`), whose divisor is the whole batch's."""
    windows, future, scale = window_batch(sampler, context, n_windows, generator)

    def micro_batch_loss(_m: int):
        loss = copy_last_ratio_loss(model(windows), future, windows[..., -1],
                                    torch.ones_like(future, dtype=torch.bool), scale)
        return loss, loss.detach()

    sharding, precision = single_process()
    [loss] = backward_step(sharding, precision, optimizer, micro_batch_loss)
    return {"loss": float(loss)}


# --- the movie decoder -----------------------------------------------------------------------------------

def movie_step(sharding: Sharding, precision: Precision, model, loss_fn, optimizer: torch.optim.Optimizer,
               sample: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], n_samples: int,
               batch: int, generator: torch.Generator) -> dict:
    """One optimizer step of the movie decoder (rtcalm.model.movie_decoder). The global batch is
    ``batch`` training samples drawn with replacement from ``n_samples``; ``sample(indices)`` returns
    their (ΔF/F windows (b, window, N), target frames (b, 1, H, W)). Every term of the movie loss is a
    mean over equal-sized images, so a micro-batch's share of the global loss is its own loss times
    b / batch. Returns the step's loss and its (unweighted) terms, averaged over micro-batches."""
    b = sharding.micro_batch(batch, "batch_size")
    rows = sharding.rows(batch, "batch_size")
    drawn = torch.randint(n_samples, (batch,), generator=generator)[rows]

    def micro_batch_loss(m: int):
        windows, targets = sample(drawn[m * b:(m + 1) * b])
        windows, targets = windows.to(sharding.runtime.device), targets.to(sharding.runtime.device)
        loss, terms = loss_fn(model(windows), targets)
        return loss * (b / batch), {"loss": float(loss.detach()), **terms}

    kept = backward_step(sharding, precision, optimizer, micro_batch_loss)
    local = torch.tensor([[part[name] for name in kept[0]] for part in kept], dtype=torch.float64).sum(0)
    total = sharding.runtime.all_reduce_sum(local.to(sharding.runtime.device)).cpu()
    parts = sharding.runtime.world_size * sharding.accumulation_steps
    return {name: float(value) / parts for name, value in zip(kept[0], total, strict=True)}
