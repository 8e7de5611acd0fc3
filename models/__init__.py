"""SlotCon models: the backbone factory (ResNet trunks), heads, semantic grouping, losses and the
student/teacher pair."""

from models.backbones import ARCHS, backbone_spec, build_backbone
from models.slotcon import TEACHER_PREFIXES, SlotCon, SlotConTeacher

__all__ = ["ARCHS", "TEACHER_PREFIXES", "SlotCon", "SlotConTeacher", "backbone_spec", "build_backbone"]
