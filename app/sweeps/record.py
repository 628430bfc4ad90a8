"""The sweep record (SPEC §5 Sweeps): its one typed definition, the API's response schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class TrialRecord(BaseModel):
    """One trial: a configuration and seed trained as the job `version`."""

    trial: int = Field(description="its number in the sweep, from 1 (the job's `trial` label)")
    version: str
    config: dict[str, Any] = Field(description="the swept fields' values; the rest is the sweep's base")
    seed: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    metric: float | None = Field(description="the sweep's metric in the job's metrics (the latest epoch's while it "
                                 "runs)")
    epochs_run: int = Field(description="epochs the job finished")
    stopped_early: dict[str, Any] | None = Field(None, description="`epoch` and `reason` when ASHA (or the base's "
                                                 "early stopping) ended it")


class DecisionRecord(BaseModel):
    """An ASHA decision: `trial` reached rung `rung` (at `epoch`) with `metric`, and went on or stopped."""

    trial: int
    rung: int
    epoch: int
    metric: float | None
    decision: Literal["continue", "stop"]


class SweepRecord(BaseModel):
    """A sweep: how it was asked for, its trials, the best of them, and ASHA's decisions."""

    id: str
    name: str | None
    status: Literal["running", "succeeded", "cancelled"] = Field(
        description="running until every trial has ended, then succeeded; cancelled after DELETE")
    strategy: Literal["grid", "random"]
    space: dict[str, Any]
    seeds: list[int]
    metric: str
    early_stop: dict[str, Any] | None
    random_seed: int | None = Field(description="the random strategy's seed: the same request with it draws the "
                                    "same configurations")
    base: dict[str, Any] = Field(description="the training request every trial shares, before the swept fields")
    labels: dict[str, str]
    trials: list[TrialRecord]
    best: TrialRecord | None = Field(description="the succeeded trial with the best metric (ties: the lower number)")
    decisions: list[DecisionRecord]
    created_at: str
    cancelled_at: str | None


class SweepPage(BaseModel):
    """One page of sweeps, newest first; pass `next` as `cursor` for the following page."""

    items: list[SweepRecord]
    next: str | None


class ConfigurationSimilarity(BaseModel):
    """Same-layer CKA between the seed replicates of one configuration, per layer, over every pair of them."""

    config: dict[str, Any]
    seeds: list[int]
    layers: list[str]
    mean: list[float]
    min: list[float]
    max: list[float]


class SweepSimilarity(BaseModel):
    configurations: list[ConfigurationSimilarity]
