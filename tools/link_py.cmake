# Links every file of the Python package source (SRC) into DST; used for the
# development tree only (see CMakeLists.txt).
file(GLOB_RECURSE files RELATIVE ${SRC} ${SRC}/*.py ${SRC}/*.txt)
foreach(f ${files})
  get_filename_component(dir ${DST}/${f} DIRECTORY)
  file(MAKE_DIRECTORY ${dir})
  if(NOT EXISTS ${DST}/${f})
    file(CREATE_LINK ${SRC}/${f} ${DST}/${f} SYMBOLIC)
  endif()
endforeach()
