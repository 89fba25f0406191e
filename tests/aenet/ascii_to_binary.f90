! nnpflow test helper: read an aenet ASCII potential file with aenet's own
! readers (load_Network_ASCII, load_Setup_ASCII, load_TrnSet_info_ASCII) and
! write it with aenet's own binary writers (save_Network, save_Setup,
! save_TrnSet_info), as train.x writes potentials.  Compiled against the
! modules of an aenet build by tests/test_aenet.py.
!
! usage: ascii_to_binary IN.nn.ascii OUT.nn
program ascii_to_binary

  use feedforward, only: Network, load_Network_ASCII, save_Network
  use sfsetup,     only: Setup, load_Setup_ASCII, save_Setup
  use trainset,    only: TrnSet, load_TrnSet_info_ASCII, save_TrnSet_info

  implicit none

  character(len=1024)                       :: path_in, path_out
  character(len=2), dimension(1)            :: no_types = (/ 'X ' /)
  type(Network)                             :: net
  type(Setup)                               :: stp
  type(TrnSet)                              :: ts

  call get_command_argument(1, path_in)
  call get_command_argument(2, path_out)

  open(10, file=trim(path_in), status='old', action='read')
  net = load_Network_ASCII(unit=10)
  stp = load_Setup_ASCII(no_types, unit=10)
  ts = load_TrnSet_info_ASCII(unit=10)
  close(10)

  ! the binary writer insists on a training set opened for reading
  ts%mode = 'read'

  open(11, file=trim(path_out), status='replace', action='write', form='unformatted')
  call save_Network(net, unit=11)
  call save_Setup(stp, unit=11)
  call save_TrnSet_info(ts, unit=11)
  close(11)

end program ascii_to_binary
