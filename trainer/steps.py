"""One optimizer step of each pretraining stage, on this process's share of the step's global batch.

Both steps follow one rule, so that one process, N processes and gradient accumulation all train on
the same loss: every process draws the whole global batch with the shared data generator and reads
only its own rows (:class:`trainer.distributed.Sharding`); each part of the loss is a sum over rows
divided by a number that does not depend on the weights (a count of targets, copy-last's squared error
per horizon step), and that divisor is taken over the whole global batch before the backward pass. Each
micro-batch's loss is then its share of the global loss: its gradients, accumulated over micro-batches and
summed over processes (:func:`trainer.distributed.all_reduce_gradients`), are exactly the gradient of the
whole batch's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rtcalm.model import Calm
from rtcalm.model.objectives import future_targets, masked_positions, next_code_targets
from trainer.config import TransformerStage
from trainer.data import CropSampler, TokenWindowSampler, interleave, missing_frames
from trainer.distributed import Precision, Sharding, all_reduce_gradients, gather_global_rows

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
    Returns the step's global reconstruction MSE and commitment loss (identical on every rank)."""
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

    latents, codes, sums = [], [], torch.zeros(2, dtype=torch.float64, device=rt.device)
    for m in range(accumulation):
        part = slice(m * b, (m + 1) * b)
        with precision.autocast():
            reconstruction, latent, code, commitment_sum = autoencode(tokenizer, encoder_input[part])
        squared_error = ((reconstruction - values[part]).square() * observed[part]).sum()
        loss = squared_error / observed_count + tokenizer.commitment_weight * commitment_sum / commitment_count
        precision.backward(loss)
        latents.append(latent)
        codes.append(code)
        sums += torch.stack([squared_error.detach(), commitment_sum.detach()]).double()
    with torch.no_grad():
        tokenizer._ema_update(gather_global_rows(rt, torch.cat(latents), accumulation),
                              gather_global_rows(rt, torch.cat(codes), accumulation))
    broadcast_tokenizer_buffers(sharding, tokenizer)
    all_reduce_gradients(rt, [p for g in optimizer.param_groups for p in g["params"]])
    precision.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    sums = rt.all_reduce_sum(sums).cpu()
    return {"mse": float(sums[0]) / observed_count,
            "commitment": tokenizer.commitment_weight * float(sums[1]) / commitment_count}


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
    rt, accumulation, stage = sharding.runtime, sharding.accumulation_steps, objective.stage
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
    sums: dict[str, torch.Tensor] = {}
    for m in range(accumulation):
        part = slice(m * b, (m + 1) * b)
        with precision.autocast():
            loss, micro_sums = objective.loss(crops[part], model_input[part], scale, divisors)
        precision.backward(loss)
        for name, value in micro_sums.items():
            sums[name] = sums[name] + value if name in sums else value
    parameters = [p for g in optimizer.param_groups for p in g["params"]]
    all_reduce_gradients(rt, parameters)
    precision.step(optimizer, parameters, stage.grad_clip)
    optimizer.zero_grad(set_to_none=True)
    sums = {name: rt.all_reduce_sum(value) for name, value in sums.items()}
    return objective.parts(sums, divisors)
