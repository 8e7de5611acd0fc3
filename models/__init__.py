"""SlotCon models: ResNet trunks, heads, semantic grouping, losses and the student/teacher pair."""

from models.resnet import ARCHS, OUTPUT_STRIDES, build_backbone
from models.slotcon import TEACHER_PREFIXES, SlotCon, SlotConTeacher

__all__ = ["ARCHS", "OUTPUT_STRIDES", "TEACHER_PREFIXES", "SlotCon", "SlotConTeacher", "build_backbone"]
