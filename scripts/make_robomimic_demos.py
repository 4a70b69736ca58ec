"""Scripted demonstrations for the robomimic tasks, written in robomimic's hdf5 layout.

robomimic's human datasets cannot be downloaded here, so this script makes demonstrations with
state-machine controllers that read privileged simulator state (object poses, target bins). To
make the demos vary the way several human operators do, every attempt draws an "operator": speed,
controller gain, approach height, grasp offset, waypoint tolerance, hesitation pauses, detours and
action noise. Only successful attempts are written (ending at the first success step: reward 1
and done 1 on that step, 0 before), with the same keys as robomimic's low_dim files
(obs/<key>, next_obs/<key>, actions, rewards, dones, states) and robomimic's env_args.

`--operators mh` imitates robomimic's multi-human (MH) files instead: six fixed operators, two each of
proficiency "better", "okay" and "worse" (robomimic's MH operator groups), take turns. Worse operators are
slower and wobblier (correlated drift), hesitate more and longer, overshoot and correct, and misjudge their
first grasp more often, after which they open, back off and regrasp. Each demo records its operator
(data/demo_i attrs `operator`, `proficiency`) and the file holds robomimic's `mask/<group>` lists
(better, okay, worse, better_operator_1, ...).

    python scripts/make_robomimic_demos.py --task lift                  # 100 demos -> <data dir>/lift-scripted.hdf5
    python scripts/make_robomimic_demos.py --task can --num-demos 200 --out can.hdf5
    python scripts/make_robomimic_demos.py --task lift --operators mh   # 120 demos -> <data dir>/lift-mhsim.hdf5
    python scripts/make_robomimic_demos.py --task can --operators mh --max-steps 600   # 120 demos -> can-mhsim.hdf5

`--images` also writes each demo's camera images, as robomimic's image files hold them (data/demo_i/obs/<camera>_image,
uint8 (T, 96, 96, 3), upright), for the image tasks (lift-img, ...): the task's official cameras, or `--cameras`.
They are rendered after a demo succeeded, from its recorded simulator states (robomimic's dataset_states_to_obs.py,
with which the official image datasets were made), so the demos are the ones the same command writes without
--images. Rendering runs on the CPU (Mesa's EGL or OSMesa; docs/robomimic_images.md).

    python scripts/make_robomimic_demos.py --task lift --images         # -> <data dir>/lift-img.hdf5
    python scripts/make_robomimic_demos.py --task can --operators mh --images   # -> can-mhsim-img.hdf5

The data dir is $CLEANDPPO_DATA or ~/.cache/cleandppo/datasets; train on it with --dataset lift-scripted
(or --dataset lift-mhsim; image tasks: --env-id lift-img --dataset lift-img).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy.spatial.transform import Rotation

from cleandppo import envs, robomimic_tasks

TASKS_WITH_CONTROLLER = ("lift", "can", "square")


# ------------------------------------------------------------------------------------------------
# Pose helpers (world frame; robomimic's OSC_POSE deltas are read in the world frame, see envs.py)
# ------------------------------------------------------------------------------------------------
def yaw_of(rot: np.ndarray) -> float:
    """Heading of a frame's x axis in the world xy plane."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def down_rotation(yaw: float) -> np.ndarray:
    """Gripper pointing straight down (z axis = -world z) with its x axis at heading `yaw`."""
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def closest_yaw(target: float, current: float, period: float) -> float:
    """target + k * period closest to current (symmetric objects: cube pi/2, nut handle pi)."""
    return target + period * np.round((current - target) / period)


def wrap(angle: float) -> float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


# ------------------------------------------------------------------------------------------------
# Operators and the shared waypoint follower
# ------------------------------------------------------------------------------------------------
def sample_operator(rng: np.random.Generator) -> dict:
    """One simulated human operator; each demo gets a fresh one."""
    return dict(
        speed=rng.uniform(0.3, 1.0),  # max |translation action| (1 = 5 cm per 50 ms step)
        gain=rng.uniform(0.5, 1.2),  # proportional gain on the position error
        rot_gain=rng.uniform(0.5, 1.0),  # proportional gain on the orientation error
        noise=rng.uniform(0.0, 0.12),  # std of Gaussian noise added to the arm actions
        tol=rng.uniform(0.006, 0.014),  # waypoint reached within this distance (m)
        approach=rng.uniform(0.05, 0.13),  # hover height above the object before descending (m)
        grasp_xy=rng.normal(0.0, 0.004, 2),  # grasp point offset from the object's centre (m)
        grasp_dz=rng.uniform(-0.006, 0.008),  # grasp height offset (m)
        close_steps=int(rng.integers(6, 13)),  # steps spent closing the gripper
        open_steps=int(rng.integers(3, 9)),  # steps spent opening it
        pause_p=rng.uniform(0.0, 0.5),  # chance of a hesitation at each phase change
        detour_p=rng.uniform(0.0, 0.5),  # chance of an extra via-point on long moves
        lift=rng.uniform(0.07, 0.2),  # lift height above the table/bin (m)
        yaw_slop=rng.normal(0.0, 0.08),  # how carefully the gripper is aligned (rad)
    )


# robomimic's MH files: 6 operators, 2 per proficiency. Per proficiency: (low, high) ranges of the operator's
# fixed habits, drawn once per operator, and of the per-demo situation, drawn for every demo.
MH_OPERATORS = [f"{p}_operator_{i}" for p in ("better", "okay", "worse") for i in (1, 2)]
STUCK_ATTEMPTS = 20  # an MH operator with no success in this many attempts stops the run (it would keep the turn)
MH_HABITS = {  # key: (better, okay, worse) ranges
    "speed": ((0.7, 1.0), (0.45, 0.75), (0.25, 0.45)),
    "gain": ((0.9, 1.2), (0.6, 1.0), (0.4, 0.7)),
    "rot_gain": ((0.8, 1.0), (0.6, 0.9), (0.4, 0.7)),
    "noise": ((0.0, 0.03), (0.03, 0.08), (0.06, 0.12)),  # white noise on the arm actions
    "wobble": ((0.0, 0.02), (0.03, 0.08), (0.08, 0.16)),  # std of a slow drift (AR(1), 0.9) on the arm actions
    "tol": ((0.006, 0.009), (0.008, 0.012), (0.01, 0.014)),
    "pause_p": ((0.0, 0.1), (0.2, 0.5), (0.5, 0.8)),  # hesitation at a phase change
    "pause_max": ((2, 4), (4, 10), (10, 25)),  # its longest length (steps)
    "stall_p": ((0.0, 0.0), (0.005, 0.015), (0.02, 0.04)),  # hesitation at any step
    "detour_p": ((0.0, 0.1), (0.2, 0.5), (0.4, 0.8)),
    "overshoot_p": ((0.0, 0.1), (0.2, 0.4), (0.5, 0.8)),  # aims beside the hover point first, then corrects
    "miss_p": ((0.0, 0.05), (0.1, 0.25), (0.3, 0.5)),  # first grasp closed 3.5-5 cm too high: regrasp
}
MH_SITUATION = {  # per demo, scaled by proficiency: spread of grasp offsets and alignment
    "grasp_xy_std": (0.002, 0.004, 0.006),
    "yaw_slop_std": (0.03, 0.08, 0.15),
}


def sample_mh_habits(rng: np.random.Generator, name: str) -> dict:
    """The fixed habits of one MH operator (e.g. "worse_operator_2")."""
    level = ("better", "okay", "worse").index(name.split("_")[0])
    habits = {key: rng.uniform(*ranges[level]) for key, ranges in MH_HABITS.items()}
    habits["pause_max"] = int(round(habits["pause_max"]))
    habits.update(operator=name, proficiency=name.split("_")[0], level=level, regrasp=True)
    return habits


def sample_mh_operator(rng: np.random.Generator, habits: dict) -> dict:
    """One demo of an MH operator: its habits plus this demo's grasp offset, heights and alignment."""
    level = habits["level"]
    op = dict(habits)
    op.update(
        approach=rng.uniform(0.05, 0.13),
        grasp_xy=rng.normal(0.0, MH_SITUATION["grasp_xy_std"][level], 2),
        grasp_dz=rng.uniform(-0.006, 0.008),
        close_steps=int(rng.integers(6, 13)),
        open_steps=int(rng.integers(3, 9)),
        lift=rng.uniform(0.07, 0.2),
        yaw_slop=rng.normal(0.0, MH_SITUATION["yaw_slop_std"][level]),
        pause_len=(1, op["pause_max"] + 1),
    )
    return op


class Follower:
    """Turns (target position, target rotation, gripper) into OSC_POSE delta actions, with noise."""

    def __init__(self, env: robomimic_tasks.RobomimicLowDimEnv, op: dict, rng: np.random.Generator):
        self.env, self.op, self.rng = env, op, rng
        self.rs = env.rs_env
        self.site = self.rs.robots[0].eef_site_id["right"]
        self.drift = np.zeros(6)  # MH operators: slow wobble

    def eef(self):
        data = self.rs.sim.data
        return np.array(data.site_xpos[self.site]), np.array(data.site_xmat[self.site]).reshape(3, 3)

    def action(self, target_pos, target_rot, gripper: float, speed: float = 1.0, rot_speed: float = 1.0) -> np.ndarray:
        """`speed`, `rot_speed`: caps on |translation| (besides the operator's speed) and |rotation| actions."""
        pos, rot = self.eef()
        op = self.op
        speed = min(op["speed"], speed)
        move = np.clip((target_pos - pos) / 0.05 * op["gain"] * 2.0, -speed, speed)
        turn = Rotation.from_matrix(target_rot @ rot.T).as_rotvec() / 0.5 * op["rot_gain"] * 2.0
        turn = np.clip(turn, -rot_speed, rot_speed)
        arm = np.concatenate([move, turn])
        arm += self.rng.normal(0.0, op["noise"], 6) * np.array([1, 1, 1, 0.5, 0.5, 0.5])
        if op.get("wobble"):  # correlated over ~10 steps: the hand drifts, unlike white noise
            self.drift = 0.9 * self.drift + np.sqrt(1 - 0.9**2) * self.rng.normal(0.0, op["wobble"], 6)
            arm += self.drift * np.array([1, 1, 1, 0.5, 0.5, 0.5])
        return np.concatenate([np.clip(arm, -1, 1), [gripper]])

    def reached(self, target_pos, tol=None) -> bool:
        return float(np.linalg.norm(self.eef()[0] - target_pos)) < (tol or self.op["tol"])


class ScriptedPolicy:
    """A list of phases; each phase yields actions until it reports done. Subclasses build the plan."""

    def __init__(self, env, op, rng):
        self.env, self.op, self.rng = env, op, rng
        self.f = Follower(env, op, rng)
        self.rs = env.rs_env
        self.grasp_error = np.zeros(3)  # MH operators: a misjudged first grasp, then a regrasp
        self.overshoot = np.zeros(3)  # MH operators: first aim beside the hover point, then correct
        self.attempt, self.empty_grip = 0, 0
        if op.get("regrasp"):
            self._misjudge()
        self.phases = self.plan()
        self.phase, self.phase_steps, self.pause = 0, 0, 0

    def _misjudge(self):
        """Draw this grasp attempt's errors (MH operators only; the first attempt errs with miss_p)."""
        miss = self.attempt == 0 and self.rng.random() < self.op["miss_p"]
        # closes too early, above the object (a lateral miss would land a finger on the object and stall)
        self.grasp_error = np.array([*self.rng.normal(0.0, 0.005, 2), self.rng.uniform(0.035, 0.05)]) * miss
        over = self.rng.random() < self.op["overshoot_p"]
        self.overshoot = np.array([*self.rng.normal(0.0, 0.03, 2), self.rng.uniform(0.0, 0.03)]) * over

    def _retry(self):
        """MH operators after a failed grasp or a plan that ended without success: open, back off, replan."""
        self.attempt += 1
        self._misjudge()
        pos, rot = self.f.eef()
        back = pos + np.array([0.0, 0.0, 0.08])
        self.phases = [
            ("grip", -1.0, "open_steps", lambda: pos, lambda: rot),
            ("move", lambda: back, lambda: rot, -1.0, 0.02),
        ]
        self.phases += self.plan()
        self.phase, self.phase_steps, self.empty_grip = 0, 0, 0

    def plan(self) -> list:
        raise NotImplementedError

    def __call__(self) -> np.ndarray:
        if self.op.get("regrasp"):
            gap = float(np.sum(np.abs(self.env.obs_dict["robot0_gripper_qpos"])))
            self.empty_grip = self.empty_grip + 1 if self.gripper > 0 and gap < 0.004 else 0
            if self.empty_grip >= 6 and self.attempt < 3:  # closed on nothing: the grasp missed
                self._retry()
            if self.op["stall_p"] and self.pause == 0 and self.rng.random() < self.op["stall_p"]:
                self.pause = int(self.rng.integers(*self.op["pause_len"]))
        while True:
            if self.pause > 0:  # hesitation: hold still, keep the gripper as it is
                self.pause -= 1
                pos, rot = self.f.eef()
                return self.f.action(pos, rot, self.gripper)
            kind, *spec = self.phases[self.phase]
            action, done = getattr(self, f"_{kind}")(*spec)
            self.phase_steps += 1
            if done and self.phase == len(self.phases) - 1 and action is None:
                if self.op.get("regrasp") and self.attempt < 3:
                    self._retry()
                    continue
                pos, rot = self.f.eef()  # plan finished without success: hold still until the time limit
                return self.f.action(pos, rot, self.gripper)
            if done and self.phase < len(self.phases) - 1:
                self.phase, self.phase_steps = self.phase + 1, 0
                if self.rng.random() < self.op["pause_p"]:
                    self.pause = int(self.rng.integers(*self.op.get("pause_len", (1, 6))))
            if action is not None:
                return action

    # phase kinds: each returns (action or None, done)
    def _move(self, target_fn, rot_fn, gripper, tol=None):
        target = target_fn()
        if self.f.reached(target, tol):
            return None, True
        self.gripper = gripper
        return self.f.action(target, rot_fn(), gripper), False

    def _grip(self, value, steps_key, target_fn, rot_fn):
        self.gripper = value
        done = self.phase_steps >= self.op[steps_key]
        return self.f.action(target_fn(), rot_fn(), value), done

    def overshoot_phase(self, target_fn, rot_fn, gripper) -> list:
        """MH operators: a first move to a point beside the target, corrected by the next phase (none otherwise)."""
        if not np.any(self.overshoot):
            return []
        miss = self.overshoot.copy()
        return [("move", lambda: target_fn() + miss, rot_fn, gripper, 0.02)]

    gripper = -1.0


def _via(rng, start, end, op):
    """An optional detour point between two waypoints (operators rarely move in straight lines)."""
    if rng.random() >= op["detour_p"]:
        return None
    mid = (np.asarray(start) + np.asarray(end)) / 2
    return mid + np.array([*rng.normal(0.0, 0.04, 2), abs(rng.normal(0.0, 0.04))])


class LiftPolicy(ScriptedPolicy):
    """Hover above the cube, align with its faces, descend, close, lift."""

    def plan(self):
        rs, op = self.rs, self.op
        cube = lambda: np.array(rs.sim.data.body_xpos[rs.cube_body_id])  # noqa: E731
        cube_rot = lambda: np.array(rs.sim.data.body_xmat[rs.cube_body_id]).reshape(3, 3)  # noqa: E731
        table_z = rs.model.mujoco_arena.table_offset[2]
        yaw0 = yaw_of(self.f.eef()[1])
        grasp_yaw = closest_yaw(yaw_of(cube_rot()), yaw0, np.pi / 2) + op["yaw_slop"]
        rot = lambda: down_rotation(grasp_yaw)  # noqa: E731
        offset = np.array([*op["grasp_xy"], op["grasp_dz"]]) + self.grasp_error
        above = lambda: cube() + offset + np.array([0, 0, op["approach"]])  # noqa: E731
        grasp = lambda: cube() + offset  # noqa: E731
        lifted = lambda: np.array([*self.f.eef()[0][:2], table_z + 0.04 + op["lift"]])  # noqa: E731
        phases = []
        via = _via(self.rng, self.f.eef()[0], above(), op)
        if via is not None:
            phases.append(("move", lambda: via, rot, -1.0, 0.03))
        phases += self.overshoot_phase(above, rot, -1.0)
        phases += [
            ("move", above, rot, -1.0),
            ("move", grasp, rot, -1.0, 0.006),
            ("grip", 1.0, "close_steps", grasp, rot),
            ("move", lifted, rot, 1.0),
        ]
        return phases


class CanPolicy(ScriptedPolicy):
    """Pick the can from bin 1, carry it above its target compartment in bin 2, lower, release, retreat."""

    def plan(self):
        rs, op, rng = self.rs, self.op, self.rng
        body = rs.obj_body_id[rs.obj_to_use]
        can = lambda: np.array(rs.sim.data.body_xpos[body])  # noqa: E731
        # the target compartment's corner nearest the robot (the far corners are at the arm's reach limit)
        centre, half = rs.target_bin_placements[rs.object_id][:2], np.asarray(rs.bin_size[:2]) / 4
        base_xy = np.asarray(rs.robots[0].base_pos)[:2]
        corners = [centre + half * np.array([sx, sy]) for sx in (-1, 1) for sy in (-1, 1)]
        corner = min(corners, key=lambda c: np.linalg.norm(c - base_xy))
        target_xy = corner + np.sign(centre - corner) * rng.uniform(0.035, 0.08, 2)
        bin_z = rs.bin2_pos[2]
        yaw0 = yaw_of(self.f.eef()[1])
        rot = lambda: down_rotation(yaw0 + op["yaw_slop"])  # noqa: E731
        offset = np.array([*op["grasp_xy"], 0.01 + op["grasp_dz"]]) + self.grasp_error
        carry_z = bin_z + 0.15 + op["lift"] * 0.3
        above = lambda: can() + offset + np.array([0, 0, op["approach"]])  # noqa: E731
        grasp = lambda: can() + offset  # noqa: E731
        hold = lambda: self.f.eef()[0]  # noqa: E731
        self._hold = None

        def held():
            if self._hold is None:
                self._hold = self.f.eef()[0]
            return self._hold

        up = lambda: np.array([*held()[:2], carry_z])  # noqa: E731
        over = lambda: np.array([*target_xy, carry_z])  # noqa: E731
        low_z = bin_z + rng.uniform(0.12, 0.17)
        lower = lambda: np.array([*target_xy, low_z])  # noqa: E731
        retreat = lambda: np.array([*target_xy, low_z + 0.15])  # noqa: E731
        phases = self.overshoot_phase(above, rot, -1.0) + [
            ("move", above, rot, -1.0),
            ("move", grasp, rot, -1.0, 0.006),
            ("grip", 1.0, "close_steps", grasp, rot),
            ("move", up, rot, 1.0, 0.03),
        ]
        via = _via(rng, np.array([*target_xy, carry_z]) - np.array([0, 0.5, 0]), over(), op)
        if via is not None:
            phases.append(("move", lambda: np.array([via[0], via[1], carry_z]), rot, 1.0, 0.04))
        phases += [
            ("move", over, rot, 1.0, 0.02),
            ("move", lower, rot, 1.0, 0.015),
            ("grip", -1.0, "open_steps", hold, rot),
            ("move", retreat, rot, -1.0),
        ]
        return phases


class SquarePolicy(ScriptedPolicy):
    """Grasp the square nut by its handle, carry its centre above the square peg aligned, lower, release."""

    def plan(self):
        rs, op, rng = self.rs, self.op, self.rng
        nut = rs.nuts[rs.nut_id]
        body = rs.obj_body_id[nut.name]
        handle_site = rs.sim.model.site_name2id(nut.important_sites["handle"])
        nut_pos = lambda: np.array(rs.sim.data.body_xpos[body])  # noqa: E731
        nut_rot = lambda: np.array(rs.sim.data.body_xmat[body]).reshape(3, 3)  # noqa: E731
        handle = lambda: np.array(rs.sim.data.site_xpos[handle_site])  # noqa: E731
        peg = np.array(rs.sim.data.body_xpos[rs.peg1_body_id])
        table_z = rs.table_offset[2]
        # handle direction in the xy plane
        hdir = handle() - nut_pos()
        handle_yaw = float(np.arctan2(hdir[1], hdir[0]))
        yaw0 = yaw_of(self.f.eef()[1])
        # the fingers close along the gripper's x axis: put it across the handle bar
        grasp_yaw = closest_yaw(handle_yaw + np.pi / 2, yaw0, np.pi) + op["yaw_slop"] * 0.5
        rot_grasp = lambda: down_rotation(grasp_yaw)  # noqa: E731
        offset = np.array([*(op["grasp_xy"] * 0.5), 0.002 + abs(op["grasp_dz"]) * 0.5])  # the nut is 2 cm thin
        above = lambda: handle() + offset + np.array([0, 0, op["approach"]])  # noqa: E731
        grasp = lambda: handle() + offset  # noqa: E731
        carry_z = table_z + 0.17 + op["lift"] * 0.3
        self._goal_yaw = None

        def goal_yaw():
            """Square hole: any multiple of pi/2 fits the peg. Turn the handle (the nut's x axis)
            towards the robot unless that is a large turn, else sideways (the far side is out of reach)."""
            if self._goal_yaw is None:
                nut_yaw = yaw_of(nut_rot())
                self._goal_yaw = (
                    np.pi if abs(wrap(np.pi - nut_yaw)) <= 0.75 * np.pi else closest_yaw(np.pi / 2, nut_yaw, np.pi)
                )
            return self._goal_yaw

        def servo(z):
            """Closed loop on the held nut: move the gripper by the nut's offset from the peg."""
            pos = self.f.eef()[0]  # 1.5x the error: the arm lags under the nut's weight
            return np.array([*(pos[:2] + 1.5 * (peg[:2] - nut_pos()[:2])), z])

        up = lambda: np.array([*self.f.eef()[0][:2], carry_z])  # noqa: E731
        rot_place = lambda: down_rotation(yaw_of(self.f.eef()[1]) + wrap(goal_yaw() - yaw_of(nut_rot())))  # noqa: E731
        over = lambda: servo(carry_z)  # noqa: E731
        low_z = table_z + 0.08 + rng.uniform(0.0, 0.02)
        low = lambda: servo(low_z)  # noqa: E731
        hold = lambda: self.f.eef()[0]  # noqa: E731
        retreat = lambda: hold() + np.array([0, 0, 0.05])  # noqa: E731
        return [
            ("move", above, rot_grasp, -1.0),
            ("move", grasp, rot_grasp, -1.0, 0.007),
            ("grip", 1.0, "close_steps", grasp, rot_grasp),
            ("move", up, rot_grasp, 1.0, 0.03),
            ("move", over, rot_place, 1.0, 0.004),
            ("move", low, rot_place, 1.0, 0.015),
            ("grip", -1.0, "open_steps", hold, rot_place),
            ("move", retreat, rot_place, -1.0),
        ]


POLICIES = {"lift": LiftPolicy, "can": CanPolicy, "square": SquarePolicy}


# ------------------------------------------------------------------------------------------------
# Transport (two arms): robot 0 clears the lid and hands the hammer over, robot 1 bins the trash and
# places the hammer. robosuite's TwoArmTransport succeeds when the payload (hammer) touches the target
# bin's floor and the trash touches the trash bin's floor. The tables are 0.6 m apart, out of reach of
# the other arm, so the hammer changes hands in the air between them.
# ------------------------------------------------------------------------------------------------
class ArmFollower(Follower):
    """Follower of one arm of a two-arm env (its end-effector site; a 7-dim arm + gripper action)."""

    def __init__(self, env, op, rng, arm: int):
        super().__init__(env, op, rng)
        self.site = self.rs.robots[arm].eef_site_id["right"]


class ArmScript(ScriptedPolicy):
    """The phase list of one arm; the arms share `flags` to wait for each other (phase kinds wait, flag)."""

    def __init__(self, env, op, rng, arm: int, plan_fn, flags: dict):
        self.env, self.op, self.rng, self.rs, self.flags = env, op, rng, env.rs_env, flags
        self.f = ArmFollower(env, op, rng, arm)
        # MH operators: pauses, stalls and wobble as on the other tasks; their regrasps are the plans' retry phases
        self.attempt, self.empty_grip = 3, 0  # (ScriptedPolicy's own regrasp never triggers)
        self.phases = plan_fn(self)
        self.phase, self.phase_steps, self.pause = 0, 0, 0

    def _wait(self, flag, target_fn, rot_fn):
        """Hold `target_fn()` (gripper unchanged) until the other arm sets `flag`."""
        if self.flags.get(flag):
            return None, True
        return self.f.action(target_fn(), rot_fn(), self.gripper), False

    def _flag(self, flag):
        self.flags[flag] = True
        return None, True

    def _retry(self, check, phase):
        """Go back to phase `phase` (a new grasp) unless `check()` holds (the object came up with the gripper)."""
        if check():
            return None, True
        self.phase, self.phase_steps = phase, 0
        return None, False

    def _turn(self, target_fn, rot_fn, gripper, tol=0.06, max_steps=80):
        """Hold `target_fn()` and turn the gripper to `rot_fn()`, done within `tol` rad (or after `max_steps`)."""
        rot = rot_fn()
        error = Rotation.from_matrix(rot @ self.f.eef()[1].T).magnitude()
        if error < tol or self.phase_steps >= max_steps:
            return None, True
        self.gripper = gripper
        return self.f.action(target_fn(), rot, gripper), False

    def _carry(self, target_fn, rot_fn, gripper, tol, speed, rot_speed):
        """A move at capped speeds (`Follower.action`), gentle on a load held off its centre of mass."""
        target = target_fn()
        if self.f.reached(target, tol):
            return None, True
        self.gripper = gripper
        return self.f.action(target, rot_fn(), gripper, speed, rot_speed), False


def _frozen(fn):
    """fn() evaluated once, at the first call (a target fixed when its phase starts)."""
    cache = []
    return lambda: cache[0] if cache else (cache.append(fn()) or cache[0])


class TransportPolicy:
    """Two ArmScripts stepped together; the action is [robot 0 arm, gripper, robot 1 arm, gripper]."""

    # The hammer's head (0.1-0.134 m from the handle's centre) holds most of its mass: its centre of mass lies
    # 0.054 m from the handle's centre towards the head. Held far from it, the box handle turns between the
    # fingers, spreads them and can drop out. So robot 0 holds the handle on the head's side, 2.4 cm past the
    # centre of mass (its fingers, 2.8 cm wide along the handle, end 8 mm short of the head), and turns the hammer
    # to point the head at itself before the handover; robot 1 takes the handle's free part, 5 cm from its centre
    # and 12.8 cm from robot 0's hand (the hands are 6.4 cm thick along the handle and must not touch).
    GRASP_OFFSETS = (0.078, -0.05)  # robot 0's, robot 1's grasp point: this far along the handle towards the head
    HANDOVER = np.array([0.0, 0.015, 1.12])  # hammer centre at the handover (the hands either side of y = 0)
    CARRY_SPEEDS = (0.5, 0.5)  # robot 1's caps on its translation and rotation actions while it carries the hammer

    def __init__(self, env, op, rng):
        self.rs = env.rs_env
        op = dict(op, noise=op["noise"] * 0.5)  # the handover needs both grippers within a few mm
        t, model, data = self.rs.transport, self.rs.sim.model, self.rs.sim.data
        handle = model.geom_name2id(t.payload.handle_geoms[0])
        self.centre = lambda: np.array(data.geom_xpos[handle])  # noqa: E731
        # handle direction, from its centre towards the head (robosuite's hammer: head at +z of the handle)
        self.axis = lambda: np.array(data.geom_xmat[handle]).reshape(3, 3)[:, 2]  # noqa: E731
        self.wrist = self.rs.robots[0]._ref_joint_pos_indexes[-1]  # robot 0's last joint (turns the gripper)
        flags = {}
        self.arms = [
            ArmScript(env, op, rng, 0, self.plan_robot0, flags),
            ArmScript(env, op, rng, 1, self.plan_robot1, flags),
        ]

    def handle_point(self, arm: int) -> np.ndarray:
        """Robot `arm`'s grasp point on the handle."""
        return self.centre() + self.GRASP_OFFSETS[arm] * self.axis()

    def head_turn(self) -> float:
        """Robot 0's turn of the hammer (yaw, rad) before the handover: none when the head already points towards
        robot 0, else the turn that points it closest to robot 0 (-y) while robot 0's last joint, which turns the
        gripper by -yaw, stays within 2.6 of its +-2.90 rad: up to half a turn, at least about a quarter."""
        axis = self.axis()
        if axis[1] <= 0:
            return 0.0
        q7 = float(self.rs.sim.data.qpos[self.wrist])
        need = wrap(-np.pi / 2 - float(np.arctan2(axis[1], axis[0])))  # in (-pi, pi]
        turns = [np.clip(need, q7 - 2.6, q7 + 2.6), np.clip(need - 2 * np.pi * np.sign(need), q7 - 2.6, q7 + 2.6)]
        return float(min(turns, key=lambda turn: abs(wrap(need - turn))))

    def across_handle(self, current_yaw: float) -> float:
        """Gripper heading with the fingers closing across the handle (closest to the current one)."""
        axis = self.axis()
        return closest_yaw(float(np.arctan2(axis[1], axis[0])) + np.pi / 2, current_yaw, np.pi)

    def plan_robot0(self, arm: ArmScript) -> list:
        """Set the lid aside, pick the hammer next to its head, turn the head towards robot 0, hold it out, let go."""
        t, op, rng, f = self.rs.transport, arm.op, arm.rng, arm.f
        table_z = self.rs.table_offsets[0][2]
        lid = lambda: np.array(t.lid_handle_pos)  # noqa: E731
        rot_lid = _frozen(lambda: down_rotation(closest_yaw(0.0, yaw_of(f.eef()[1]), np.pi) + op["yaw_slop"] * 0.5))
        lid_grasp = lambda: lid() + np.array([0, 0, 0.003])  # noqa: E731
        lid_up = _frozen(lambda: lid() + np.array([0, 0, 0.1 + op["lift"] * 0.3]))
        aside = lambda: np.array([lid_up()[0] - rng.uniform(0.36, 0.4), lid_up()[1], lid_up()[2]])  # noqa: E731
        aside = _frozen(aside)
        lid_down = lambda: np.array([*aside()[:2], table_z + 0.06])  # noqa: E731
        here = lambda: f.eef()[0]  # noqa: E731
        rot_hammer = _frozen(lambda: down_rotation(self.across_handle(yaw_of(f.eef()[1]))))
        grasp = lambda: self.handle_point(0) + np.array([0, 0, 0.002])  # noqa: E731
        above = lambda: grasp() + np.array([0, 0, op["approach"] + 0.05])  # noqa: E731
        over = lambda: np.array([*above()[:2], max(above()[2], 1.03)])  # noqa: E731  bin walls' top: 0.96 m
        up = lambda: np.array([*f.eef()[0][:2], 1.02])  # noqa: E731
        # where the turn clears the bin's walls, out of the arm's base (a head-side grasp can be near it)
        high = _frozen(lambda: np.array([f.eef()[0][0], max(f.eef()[0][1], -0.42), self.HANDOVER[2]]))
        turn = _frozen(self.head_turn)
        turned = [_frozen(lambda k=k: down_rotation(yaw_of(rot_hammer()) + turn() * k / 3)) for k in (1, 2, 3)]
        out = lambda: f.eef()[0] + (self.HANDOVER - self.centre())  # noqa: E731  closed loop on the hammer
        hold = _frozen(here)
        lift_off = _frozen(lambda: f.eef()[0] + np.array([0, 0, 0.07]))  # straight up: backing off dragged the head
        back = _frozen(lambda: f.eef()[0] + np.array([0, -0.15, 0.0]))
        return [
            ("move", lambda: lid_grasp() + np.array([0, 0, op["approach"]]), rot_lid, -1.0),
            ("move", lid_grasp, rot_lid, -1.0, 0.006),
            ("grip", 1.0, "close_steps", lid_grasp, rot_lid),
            ("move", lid_up, rot_lid, 1.0, 0.02),
            ("move", aside, rot_lid, 1.0, 0.03),
            ("move", lid_down, rot_lid, 1.0, 0.02),
            ("grip", -1.0, "open_steps", here, rot_lid),
            ("move", lambda: lid_down() + np.array([0, 0, 0.12]), rot_lid, -1.0, 0.03),
            ("move", over, rot_hammer, -1.0, 0.03),  # over the start bin's wall (a low approach caught on it)
            ("move", above, rot_hammer, -1.0, 0.02),
            ("move", grasp, rot_hammer, -1.0, 0.006),
            ("grip", 1.0, "close_steps", here, rot_hammer),
            ("move", up, rot_hammer, 1.0, 0.03),
            ("retry", lambda: self.centre()[2] > 0.95, 9),  # the hammer was not lifted: grasp it again
            ("move", high, rot_hammer, 1.0, 0.03),
            *[("turn", high, rot, 1.0) for rot in turned],  # head towards robot 1: turn it away, in thirds
            ("move", out, turned[-1], 1.0, 0.01),
            ("flag", "hammer_out"),
            ("wait", "robot1_holds", hold, turned[-1]),
            ("grip", -1.0, "open_steps", hold, turned[-1]),
            ("flag", "robot0_let_go"),
            ("move", lift_off, turned[-1], -1.0, 0.02),
            ("flag", "robot0_clear"),
            ("move", back, turned[-1], -1.0, 0.03),
        ]

    def plan_robot1(self, arm: ArmScript) -> list:
        """Move the trash to the trash bin, take the hammer by its handle's free part, lay it in the target bin."""
        t, op, rng, f = self.rs.transport, arm.op, arm.rng, arm.f
        trash = lambda: np.array(t.trash_pos)  # noqa: E731
        trash_rot = np.array(self.rs.sim.data.body_xmat[t.trash_body_id]).reshape(3, 3)
        rot_trash = _frozen(lambda: down_rotation(closest_yaw(yaw_of(trash_rot), yaw_of(f.eef()[1]), np.pi / 2)))
        offset = np.array([*(op["grasp_xy"] * 0.5), 0.006])  # fingertips clear of the bin's floor
        carry_z = 1.06 + op["lift"] * 0.2  # above the bins' walls (floor 0.81 m, walls 0.15 m)
        bin_xy = lambda name: np.array(getattr(t, name))[:2]  # noqa: E731
        jitter = rng.uniform(-0.05, 0.05, 2)  # where over the trash bin the trash is let go
        over_trash_bin = lambda: np.array([*(bin_xy("trash_bin_pos") + jitter), carry_z])  # noqa: E731
        here = lambda: f.eef()[0]  # noqa: E731
        wait_at = _frozen(lambda: np.array([self.HANDOVER[0], 0.22, self.HANDOVER[2] + 0.08]))
        rot_wait = _frozen(lambda: down_rotation(closest_yaw(0.0, yaw_of(f.eef()[1]), np.pi)))
        rot_hammer = lambda: down_rotation(self.across_handle(yaw_of(f.eef()[1])))  # noqa: E731  follows the handle
        grasp = lambda: self.handle_point(1) + np.array([0, 0, 0.002])  # noqa: E731
        above = lambda: grasp() + np.array([0, 0, 0.07])  # noqa: E731
        held = _frozen(lambda: (f.eef()[0], down_rotation(yaw_of(f.eef()[1]))))
        # carrying: turn the hammer to lie along x (the bin's inner width fits it either way; along x keeps the arm
        # away from its base) and servo the hammer's centre over the bin's centre, then lower it
        turn = _frozen(
            lambda: wrap(
                closest_yaw(0.0, float(np.arctan2(self.axis()[1], self.axis()[0])), np.pi)
                - float(np.arctan2(self.axis()[1], self.axis()[0]))
            )
        )
        rot_carry = _frozen(lambda: down_rotation(yaw_of(f.eef()[1]) + turn()))
        target = lambda z: f.eef()[0] + (np.array([*bin_xy("target_bin_pos"), z]) - self.centre())  # noqa: E731
        place_z = t.target_bin_pos[2] + 0.06 + rng.uniform(0.0, 0.02)
        return [
            ("move", lambda: np.array([*(trash() + offset)[:2], carry_z]), rot_trash, -1.0, 0.02),  # above the walls
            ("move", lambda: trash() + offset + np.array([0, 0, op["approach"] * 0.5]), rot_trash, -1.0),
            ("move", lambda: trash() + offset, rot_trash, -1.0, 0.006),
            ("grip", 1.0, "close_steps", lambda: trash() + offset, rot_trash),  # holding "here" drifted off the cube
            ("move", lambda: np.array([*f.eef()[0][:2], carry_z]), rot_trash, 1.0, 0.03),
            ("retry", lambda: trash()[2] > 0.95, 0),  # the trash slipped out: grasp it again
            ("move", over_trash_bin, rot_trash, 1.0, 0.03),
            ("grip", -1.0, "open_steps", here, rot_trash),
            ("move", wait_at, rot_wait, -1.0, 0.03),
            ("wait", "hammer_out", wait_at, rot_wait),
            ("move", above, rot_hammer, -1.0, 0.01),
            ("move", grasp, rot_hammer, -1.0, 0.006),
            ("grip", 1.0, "close_steps", grasp, rot_hammer),
            ("flag", "robot1_holds"),
            ("wait", "robot0_let_go", lambda: held()[0], lambda: held()[1]),
            ("wait", "robot0_clear", lambda: held()[0], lambda: held()[1]),
            # slowly: a jerk swung the hammer about the fingers until it dropped out
            ("carry", lambda: target(carry_z), rot_carry, 1.0, 0.02, *self.CARRY_SPEEDS),
            ("carry", lambda: target(place_z), rot_carry, 1.0, 0.01, *self.CARRY_SPEEDS),
            ("grip", -1.0, "open_steps", here, rot_carry),
            ("move", _frozen(lambda: f.eef()[0] + np.array([0, 0, 0.12])), rot_carry, -1.0),
        ]

    attempt = 0  # record_attempt's `regrasps` for MH operators (retries are phases here)

    def __call__(self) -> np.ndarray:
        return np.concatenate([arm() for arm in self.arms])


POLICIES["transport"] = TransportPolicy
TASKS_WITH_CONTROLLER += ("transport",)


# ------------------------------------------------------------------------------------------------
# Recording
# ------------------------------------------------------------------------------------------------
def record_attempt(
    env: robomimic_tasks.RobomimicLowDimEnv,
    seed: int,
    rng: np.random.Generator,
    max_steps: int,
    habits: dict | None = None,
):
    """Run one operator on one seeded episode; return (demo dict or None, steps). Without `habits` a fresh
    scripted operator; with an MH operator's habits, that operator (recorded in demo["attrs"])."""
    env.reset(seed=seed)
    op = sample_operator(rng) if habits is None else sample_mh_operator(rng, habits)
    policy = POLICIES[env.task](env, op, rng)
    keys = {k: [] for k in ("actions", "rewards", "dones", "states")}
    obs, next_obs = [], []
    empty_grip = 0  # steps the gripper has been closed on nothing: the grasp missed, give up early
    for t in range(max_steps):
        obs.append(env.robomimic_obs(env.obs_dict))
        keys["states"].append(np.array(env.rs_env.sim.get_state().flatten()))
        action = policy()
        _, reward, _, _, info = env.step(action)
        next_obs.append(env.robomimic_obs(env.obs_dict))
        keys["actions"].append(action)
        keys["rewards"].append(float(reward))
        keys["dones"].append(int(info["success"]))
        gap = float(np.sum(np.abs(env.obs_dict["robot0_gripper_qpos"])))
        empty_grip = empty_grip + 1 if action[-1] > 0 and gap < 0.004 else 0
        if empty_grip >= 10 and not op.get("regrasp"):  # MH operators regrasp instead
            return None, t + 1
        if info["success"]:
            demo = {k: np.asarray(v) for k, v in keys.items()}
            if habits is not None:
                demo["attrs"] = dict(operator=op["operator"], proficiency=op["proficiency"], regrasps=policy.attempt)
            demo["obs"] = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
            demo["next_obs"] = {k: np.stack([o[k] for o in next_obs]) for k in next_obs[0]}
            return demo, t + 1
    return None, max_steps


def write_robomimic_hdf5(path: str, demos: list, env_args: dict, attrs: dict | None = None, masks: dict | None = None):
    """Write demos in robomimic's layout, atomically (robomimic_tasks.read_robomimic_hdf5 / load_dataset read it back).

    Each demo: dict(obs={key: (T, d)}, actions (T, Da), rewards (T,), dones (T,), and optionally
    next_obs={key: ...}, states (T, S) and attrs (its group's attributes)). `data` gets env_args (JSON)
    and total; `attrs` go there too. `masks` ({group: [demo indices]}) become robomimic's mask/<group>.
    """
    import h5py

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        group = f.create_group("data")
        total = 0
        for i, demo in enumerate(demos):
            g = group.create_group(f"demo_{i}")
            for field in ("obs", "next_obs"):
                for key, value in demo.get(field, {}).items():
                    g.create_dataset(f"{field}/{key}", data=np.asarray(value), compression="gzip")
            for key in ("actions", "rewards", "dones", "states"):
                if key in demo:
                    g.create_dataset(key, data=np.asarray(demo[key]), compression="gzip")
            g.attrs["num_samples"] = len(demo["actions"])
            for key, value in demo.get("attrs", {}).items():
                g.attrs[key] = value
            total += len(demo["actions"])
        group.attrs["env_args"] = json.dumps(env_args)
        group.attrs["total"] = total
        for key, value in (attrs or {}).items():
            group.attrs[key] = value
        for name, indices in (masks or {}).items():  # robomimic: mask/<group> = the group's demo names (bytes)
            f.create_dataset(f"mask/{name}", data=np.array([f"demo_{i}".encode() for i in indices], dtype="S"))
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, help="lift, can, square or transport (robomimic names accepted)")
    parser.add_argument(
        "--operators",
        choices=("scripted", "mh"),
        default="scripted",
        help="scripted: a fresh random operator per attempt; mh: six operators of three proficiencies take turns",
    )
    parser.add_argument(
        "--num-demos", type=int, default=None, help="successful demonstrations to write (default 100; mh: 120)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output hdf5 (default: <data dir>/<task>-scripted.hdf5; mh: <task>-mhsim.hdf5; --images: <task>-img.hdf5, "
        "<task>-mhsim-img.hdf5)",
    )
    parser.add_argument(
        "--images", action="store_true", help="also write the cameras' 96x96 RGB images (obs/<camera>_image)"
    )
    parser.add_argument(
        "--cameras",
        nargs="+",
        default=None,
        help="with --images: these cameras (default: the image task's official ones)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the operators and episode i's reset (seed + i)")
    parser.add_argument(
        "--max-attempts", type=int, default=None, help="give up after this many (default 3 x num-demos)"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="longest demo (default: the task's max episode steps; slow MH operators on Can need more)",
    )
    args = parser.parse_args(argv)

    if not envs.is_robomimic(args.task):
        envs.fail(f"unknown --task {args.task!r}; scripted controllers exist for {', '.join(TASKS_WITH_CONTROLLER)}")
    task = envs.resolve_env_id(args.task)
    if task not in POLICIES:
        envs.fail(
            f"no scripted controller for {task}; use --task {' or '.join(TASKS_WITH_CONTROLLER)} "
            f"(or --dataset {task}-mh when robomimic's download is reachable)"
        )
    mh = args.operators == "mh"
    if args.num_demos is None:
        args.num_demos = 120 if mh else 100
    if args.num_demos < 1:
        envs.fail(f"--num-demos must be >= 1, got {args.num_demos}")
    if args.cameras is not None and not args.images:
        envs.fail("--cameras chooses the cameras of --images; add --images")
    name = f"{task}-{'mhsim' if mh else 'scripted'}"
    if args.images:
        name = f"{task}-mhsim-img" if mh else f"{task}-img"
    out = args.out or os.path.join(envs.data_dir(), f"{name}.hdf5")
    max_attempts = args.max_attempts or 3 * args.num_demos
    max_steps = args.max_steps or envs.ROBOMIMIC_TASKS[task]["max_episode_steps"]

    env_args = robomimic_tasks.default_robomimic_env_args(task)
    if args.images:  # renders only for the demos that succeeded, from their states
        env = robomimic_tasks.RobomimicImageEnv(f"{task}-img", cameras=args.cameras)
        env.render_images = False
        env_args = robomimic_tasks.default_robomimic_env_args(f"{task}-img")
        env_args["env_kwargs"]["camera_names"] = list(env.cameras)
    else:
        env = robomimic_tasks.make_robomimic_env(task)
    rng = np.random.default_rng(args.seed)
    operators = {}  # mh: name -> habits, drawn from their own stream (the scripted stream stays as it was)
    if mh:
        habits_rng = np.random.default_rng([args.seed, 1])
        operators = {name: sample_mh_habits(habits_rng, name) for name in MH_OPERATORS}
    made = {name: 0 for name in operators}
    tried = {name: 0 for name in operators}
    demos, attempts, start = [], 0, time.time()
    while len(demos) < args.num_demos and attempts < max_attempts:
        name = min(made, key=made.get) if mh else None  # the operator with the fewest demos takes the next turn
        demo, steps = record_attempt(env, args.seed + attempts, rng, max_steps, operators.get(name))
        attempts += 1
        if demo is not None:
            if args.images:
                images = env.images_of_states(demo["states"])
                demo["obs"].update({f"{camera}_image": frames for camera, frames in images.items()})
            demos.append(demo)
        if mh:
            tried[name] += 1
            made[name] += demo is not None
            if tried[name] == STUCK_ATTEMPTS and not made[name]:  # it keeps the turn: it would never give it back
                envs.fail(
                    f"{name} succeeded in none of its {STUCK_ATTEMPTS} attempts of at most {max_steps} steps; pass "
                    f"--max-steps {2 * max_steps} (slow MH operators need more steps, e.g. on Can)"
                )
        print(
            f"[{task}] attempt {attempts}{f' ({name})' if mh else ''}: "
            f"{'success' if demo is not None else 'failure'} in {steps} steps; "
            f"{len(demos)}/{args.num_demos} demos, success rate {len(demos) / attempts:.2f}, "
            f"{time.time() - start:.0f}s",
            flush=True,
        )
    env.close()
    if not demos:
        envs.fail(f"the {task} controller succeeded in none of {attempts} attempts; nothing written")
    rate = len(demos) / attempts
    lengths = [len(d["actions"]) for d in demos]
    info = dict(
        task=task,
        attempts=attempts,
        successes=len(demos),
        success_rate=rate,
        seed=args.seed,
        command=" ".join(["python", "scripts/make_robomimic_demos.py", *(argv if argv is not None else sys.argv[1:])]),
        controller=POLICIES[task].__name__,
    )
    if args.images:
        info["cameras"] = list(env.cameras)
    masks = None
    if mh:
        info["operators"] = {
            name: dict(demos=made[name], attempts=tried[name], **{k: operators[name][k] for k in MH_HABITS})
            for name in MH_OPERATORS
        }
        masks = {}
        for i, demo in enumerate(demos):
            for group in (demo["attrs"]["proficiency"], demo["attrs"]["operator"]):
                masks.setdefault(group, []).append(i)
        per_operator = ", ".join(f"{n} {made[n]}/{tried[n]}" for n in MH_OPERATORS)
        print(f"[{task}] operators (demos/attempts): {per_operator}")
    write_robomimic_hdf5(
        out,
        demos,
        env_args,
        attrs={"cleandppo_generator": json.dumps(info)},
        masks=masks,
    )
    print(
        f"[{task}] wrote {len(demos)} demos ({sum(lengths)} steps, length mean {np.mean(lengths):.0f} "
        f"min {min(lengths)} max {max(lengths)}) to {out}; controller success rate {rate:.3f} "
        f"({len(demos)}/{attempts}) in {time.time() - start:.0f}s"
    )
    if len(demos) < args.num_demos:
        envs.fail(f"only {len(demos)} of {args.num_demos} demos after {attempts} attempts; raise --max-attempts")


if __name__ == "__main__":
    main()
