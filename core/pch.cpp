// Empty: compiles core/pch.h once so that the other targets can reuse it.
