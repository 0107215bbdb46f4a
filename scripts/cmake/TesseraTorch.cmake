# Locates LibTorch and defines the interface target `tessera::torch`.
#
# Two modes:
#  * TESSERA_WITH_CUDA=ON : the full LibTorch through its own TorchConfig.cmake (GPU machines,
#    where the CUDA libraries that libtorch_cuda needs are installed beside PyTorch).
#  * TESSERA_WITH_CUDA=OFF: link only libtorch_cpu + libc10 from the prefix. The torch wheel on PyPI
#    is a CUDA build; its CPU half loads without cuDNN/cuBLAS/NCCL, so a CPU machine needs just the
#    wheel plus the small CUDA runtime and CUPTI wheels that libtorch_cpu references.
#
# The prefix comes from (first found): -DTESSERA_LIBTORCH=..., $TESSERA_LIBTORCH, Torch_DIR,
# CMAKE_PREFIX_PATH entries. It may be a LibTorch root or its share/cmake directory.

set(TESSERA_LIBTORCH "$ENV{TESSERA_LIBTORCH}" CACHE PATH "LibTorch root (torch/ inside a wheel, or a LibTorch zip)")

function(_tessera_torch_root_from out hint)
  get_filename_component(h "${hint}" ABSOLUTE)
  foreach(candidate "${h}" "${h}/.." "${h}/../.." "${h}/../../..")
    get_filename_component(c "${candidate}" ABSOLUTE)
    if(EXISTS "${c}/include/torch/csrc/api/include/torch/version.h")
      set(${out} "${c}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
endfunction()

set(_roots)
foreach(hint ${TESSERA_LIBTORCH} ${Torch_DIR} ${CMAKE_PREFIX_PATH})
  _tessera_torch_root_from(_r "${hint}")
  if(_r)
    list(APPEND _roots "${_r}")
  endif()
endforeach()
list(REMOVE_DUPLICATES _roots)
list(GET _roots 0 TESSERA_TORCH_ROOT)
if(NOT TESSERA_TORCH_ROOT)
  message(FATAL_ERROR
    "LibTorch not found. Run scripts/setup.sh (it installs torch 2.11.0 into ~/.cache/tessera), "
    "or point TESSERA_LIBTORCH at a LibTorch root (the torch/ folder of a torch wheel).")
endif()

set(_vh "${TESSERA_TORCH_ROOT}/include/torch/headeronly/version.h")
if(NOT EXISTS "${_vh}")
  set(_vh "${TESSERA_TORCH_ROOT}/include/torch/csrc/api/include/torch/version.h")
endif()
file(STRINGS "${_vh}" _ver_lines REGEX "#define TORCH_VERSION_(MAJOR|MINOR|PATCH) ")
set(TESSERA_TORCH_VERSION "")
foreach(part MAJOR MINOR PATCH)
  string(REGEX MATCH "TORCH_VERSION_${part} ([0-9]+)" _m "${_ver_lines}")
  list(APPEND TESSERA_TORCH_VERSION "${CMAKE_MATCH_1}")
endforeach()
string(REPLACE ";" "." TESSERA_TORCH_VERSION "${TESSERA_TORCH_VERSION}")
message(STATUS "Tessera: LibTorch ${TESSERA_TORCH_VERSION} at ${TESSERA_TORCH_ROOT}")
if(NOT TESSERA_TORCH_VERSION VERSION_EQUAL "2.11.0")
  message(WARNING "Tessera is pinned to LibTorch 2.11.0; found ${TESSERA_TORCH_VERSION}.")
endif()

add_library(tessera_torch INTERFACE)
add_library(tessera::torch ALIAS tessera_torch)

if(TESSERA_WITH_CUDA)
  list(PREPEND CMAKE_PREFIX_PATH "${TESSERA_TORCH_ROOT}/share/cmake")
  find_package(Torch REQUIRED)
  target_link_libraries(tessera_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(tessera_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
  target_compile_definitions(tessera_torch INTERFACE TESSERA_WITH_CUDA=1)
  # Keep libtorch_cuda even though no symbol of it is referenced: it registers the CUDA kernels.
  target_link_options(tessera_torch INTERFACE "LINKER:--no-as-needed")
else()
  find_library(TESSERA_TORCH_CPU_LIB torch_cpu PATHS "${TESSERA_TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(TESSERA_C10_LIB c10 PATHS "${TESSERA_TORCH_ROOT}/lib" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(tessera_torch INTERFACE ${TESSERA_TORCH_CPU_LIB} ${TESSERA_C10_LIB})
  target_include_directories(tessera_torch SYSTEM INTERFACE
    "${TESSERA_TORCH_ROOT}/include" "${TESSERA_TORCH_ROOT}/include/torch/csrc/api/include")
  target_compile_definitions(tessera_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
  # libtorch_cpu of the CUDA wheel references libcudart/libcupti; they come from the nvidia-* wheels
  # installed next to torch by scripts/setup.sh, or from a system CUDA toolkit.
  set(_rpath "${TESSERA_TORCH_ROOT}/lib")
  get_filename_component(_site "${TESSERA_TORCH_ROOT}/.." ABSOLUTE)
  foreach(d "${_site}/nvidia/cu13/lib" "${_site}/nvidia/cuda_runtime/lib" "${_site}/nvidia/cuda_cupti/lib")
    if(EXISTS "${d}")
      list(APPEND _rpath "${d}")
    endif()
  endforeach()
  set(TESSERA_TORCH_RPATH "${_rpath}" CACHE INTERNAL "")
  # rpath-link lets the linker resolve libtorch_cpu's own dependencies.
  foreach(d ${_rpath})
    target_link_options(tessera_torch INTERFACE "LINKER:-rpath-link,${d}")
  endforeach()
endif()
